"""The porting CLIs refuse what they cannot do well before doing any work: out-of-range numbers (argparse usage
errors, exit 2), outputs that are not theirs to replace, vacuous parity runs, and bad --model-arg values."""
import json
import os
import subprocess

import pytest
import torch
from safetensors.torch import save_file

from conftest import port, timm_model
from porting import convert, export, parity, random_init, registry_parity

NAME = 'deit_tiny_patch16_224'


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    return random_init.save(random_init.create(NAME, depth=1), tmp_path_factory.mktemp('ckpt') / 'd.safetensors')


@pytest.fixture
def small(monkeypatch):
    """random_init's CLI builds the full-depth model; one block is as good a file to write, and quicker."""
    create = random_init.create
    monkeypatch.setattr(random_init, 'create', lambda name, seed=0: create(name, seed, depth=1))


def usage_error(main, argv, flag, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    got = capsys.readouterr()
    assert e.value.code == 2 and f'error: argument {flag}:' in got.err and 'parity' not in got.out, got


TOLERANCES = ['0', '-0.5', 'nan', 'inf']


@pytest.mark.parametrize('flag, value', [('--batch', '0'), ('--batch', '-2'), ('--seed', '-1'),
                                         ('--seed', str(2 ** 32)), ('--num-classes', '-1'), ('--img-size', '0'),
                                         ('--img-size', '224x0'), ('--window-size', '0')]
                         + [('--tolerance', t) for t in TOLERANCES])
def test_convert_range_checks_numbers_before_converting(ckpt, tmp_path, capsys, flag, value):
    out = tmp_path / 'out'
    usage_error(convert.main, ['--model', NAME, '--checkpoint', str(ckpt), '--model-arg', 'depth=1',
                               '--out', str(out), flag, value], flag, capsys)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('value', TOLERANCES)
def test_export_range_checks_tolerance(tmp_path, capsys, value):
    # refused before --model is read: it need not exist
    usage_error(export.main, ['--model', str(tmp_path / 'm'), '--out', str(tmp_path / 'x.safetensors'),
                              '--tolerance', value], '--tolerance', capsys)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('value', ['-1', str(2 ** 32), 'one'])
def test_random_init_range_checks_seed(tmp_path, capsys, value):
    usage_error(random_init.main, ['--model', NAME, '--out', str(tmp_path / 'r.safetensors'), '--seed', value],
                '--seed', capsys)
    assert os.listdir(tmp_path) == []


def test_parity_needs_an_example_and_a_real_tolerance():
    tm = timm_model(NAME, depth=1)
    model, variables = port(tm)
    for kwargs, msg in [(dict(batch=0), 'at least one example'), (dict(batch=-1), 'at least one example'),
                        *[(dict(tolerance=float(t)), 'finite number > 0') for t in TOLERANCES]]:
        with pytest.raises(ValueError, match=msg):
            parity.check(NAME, tm, model, variables, **kwargs)


@pytest.mark.parametrize('args, msg', [(['foo=1'], "unexpected keyword argument 'foo'"),
                                       (['num_heads=5'], 'dim should be divisible by num_heads'),
                                       (['patch_size=0'], 'ZeroDivisionError'),
                                       (['depth=1', 'class_token=False'], 'Token pooling needs the class token')])
def test_convert_model_arg_timm_refuses_is_an_error_line(ckpt, tmp_path, capsys, args, msg):
    argv = ['--model', NAME, '--checkpoint', str(ckpt), '--out', str(tmp_path / 'out')]
    assert convert.main(argv + [a for arg in args for a in ('--model-arg', arg)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: timm cannot build {NAME} with --model-arg ') and msg in err, err
    assert os.listdir(tmp_path) == []


def test_random_init_replaces_only_a_file_it_wrote(tmp_path, capsys, small):
    argv = lambda out, seed=0: ['--model', NAME, '--out', str(tmp_path / out), '--seed', str(seed)]
    (tmp_path / 'notes.safetensors').write_text('a user file')
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'user.safetensors'))  # someone's own weights
    (tmp_path / 'dir.safetensors').mkdir()
    assert random_init.main(argv('r.safetensors')) == 0
    os.symlink(tmp_path / 'r.safetensors', tmp_path / 'link.safetensors')
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    capsys.readouterr()
    for out, msg in [('notes.safetensors', 'is a file vitjax did not write'),
                     ('user.safetensors', 'is a file vitjax did not write'),
                     ('dir.safetensors', 'is a directory'), ('link.safetensors', 'is a symbolic link'),
                     ('notes.safetensors/x.safetensors', 'notes.safetensors is not a directory'),
                     ('/proc/r.safetensors', '/proc is not writable')]:
        assert random_init.main(argv(out)) == 1
        got = capsys.readouterr()
        assert got.err.startswith('error: ') and msg in got.err and got.err.count('\n') == 1, got.err
        assert 'wrote' not in got.out
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert random_init.main(argv('r.safetensors', seed=1)) == 0  # the file it wrote is replaced
    assert (tmp_path / 'r.safetensors').read_bytes() != before[tmp_path / 'r.safetensors']
    assert sorted(os.listdir(tmp_path)) == ['dir.safetensors', 'link.safetensors', 'notes.safetensors',
                                            'r.safetensors', 'user.safetensors']


def test_random_init_write_is_atomic(tmp_path, capsys, monkeypatch, small):
    out = tmp_path / 'r.safetensors'
    assert random_init.main(['--model', NAME, '--out', str(out)]) == 0
    before = out.read_bytes()

    def full(tensors, path, metadata=None):
        with open(path, 'wb') as f:
            f.write(b'half a file')
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('safetensors.torch.save_file', full)
    capsys.readouterr()
    assert random_init.main(['--model', NAME, '--out', str(out), '--seed', '1']) == 1
    assert 'error: [Errno 28] No space left on device; nothing written to' in capsys.readouterr().err
    assert out.read_bytes() == before and os.listdir(tmp_path) == ['r.safetensors']


# -- registry_parity: refuses before its (minutes-long) runs; a failed random_init is a failed row -------------
@pytest.fixture
def runs(monkeypatch):
    done = []

    def run(name, work):
        done.append(name)
        return {'model': name, 'passed': True, 'max_abs_diff': 0.0, 'max_abs_logit': 1.0,
                'pre_logits': {'max_abs_diff': 0.0}}
    monkeypatch.setattr(registry_parity, 'run', run)
    return done


def test_registry_parity_refuses_before_running(tmp_path, capsys, runs):
    (tmp_path / 'plain.md').write_text('no markers\n')
    (tmp_path / 'notes.json').write_text('{"mine": 1}\n')
    with pytest.raises(SystemExit) as e:
        registry_parity.main(['--pattern', 'vit_tiny_patch16_224', 'no_such_model*'])
    assert e.value.code == 2 and 'argument --pattern: no_such_model* matches no registry model' in \
        capsys.readouterr().err
    for argv, msg in [(['--readme', str(tmp_path / 'missing.md')], 'missing.md does not exist'),
                      (['--readme', str(tmp_path / 'plain.md')], 'plain.md has no <!-- parity-table:start -->'),
                      (['--json', str(tmp_path / 'notes.json')], 'notes.json is a file vitjax did not write')]:
        assert registry_parity.main(['--pattern', 'vit_tiny_patch16_224', *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith('error: ') and msg in err, err
    assert runs == [] and (tmp_path / 'notes.json').read_text() == '{"mine": 1}\n'
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{registry_parity.START}\n{registry_parity.END}\nend\n')
    for _ in range(2):  # the second run replaces the reports file the first one wrote
        assert registry_parity.main(['--pattern', 'vit_tiny_patch16_224', '--readme', str(readme),
                                     '--json', str(tmp_path / 'r.json')]) == 0
    assert [r['model'] for r in json.loads((tmp_path / 'r.json').read_text())] == ['vit_tiny_patch16_224']
    assert '| `vit_tiny_patch16_224` |' in readme.read_text() and readme.read_text().endswith('end\n')
    assert runs == ['vit_tiny_patch16_224'] * 2
    assert sorted(os.listdir(tmp_path)) == ['README.md', 'notes.json', 'plain.md', 'r.json']


def test_registry_parity_failed_random_init_is_a_failed_row(tmp_path, monkeypatch):
    def run(cmd, check=False, **kwargs):
        proc = subprocess.CompletedProcess(cmd, 1, '', 'Traceback ...\nerror: out of memory\n')
        if check:
            raise subprocess.CalledProcessError(1, cmd, proc.stdout, proc.stderr)
        return proc
    monkeypatch.setattr(subprocess, 'run', run)
    report = registry_parity.run('vit_tiny_patch16_224', tmp_path)
    assert report == {'model': 'vit_tiny_patch16_224', 'passed': False, 'error': ['error: out of memory']}
    assert 'error:' in registry_parity.row(report)
