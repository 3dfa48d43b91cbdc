"""The public conversion CLI, end to end: random-init timm checkpoint -> model directory -> vitjax.load."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import vitjax
from conftest import images, max_diff, run_timm
from porting import convert, random_init

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def deit(tmp_path_factory):
    d = tmp_path_factory.mktemp('deit')
    tm = random_init.create('deit_tiny_patch16_224', seed=3, depth=2)
    random_init.save(tm, d / 'deit.safetensors')
    return d, tm


@pytest.mark.slow
def test_cli_writes_loadable_model_with_parity_report(deit):
    d, tm = deit
    out = d / 'out'
    proc = subprocess.run([sys.executable, '-m', 'porting.convert', '--model', 'deit_tiny_patch16_224',
                           '--checkpoint', str(d / 'deit.safetensors'), '--model-arg', 'depth=2', '--out', str(out)],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert 'parity PASSED' in proc.stdout
    report = json.loads((out / 'parity.json').read_text())
    assert {'model', 'max_abs_diff', 'max_abs_logit', 'tolerance', 'passed'} <= set(report)
    assert report['passed'] and report['max_abs_diff'] <= report['tolerance'] == 1e-4 * max(1, report['max_abs_logit'])
    assert report['pre_logits']['passed']
    # Loadable without torch, and it computes what the timm model computes.
    code = (f"import sys; sys.modules['torch'] = None\nimport vitjax, numpy as np\n"
            f"m, v = vitjax.load({str(out)!r}); x = np.load({str(d / 'x.npy')!r})\n"
            f"np.save({str(d / 'y.npy')!r}, np.asarray(m.apply(v, x)))")
    model, _ = vitjax.load(out)
    x = images(model, seed=5)
    np.save(d / 'x.npy', x)
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT)
    assert max_diff(np.load(d / 'y.npy'), run_timm(tm, x)) < 1e-4
    assert model.pretrained_cfg.mean == (0.485, 0.456, 0.406) and model.pretrained_cfg.crop_pct == 0.9


@pytest.mark.slow
def test_cli_new_size_and_head(deit):
    d, _ = deit
    out = d / 'resized'
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(d / 'deit.safetensors'),
                         '--model-arg', 'depth=2', '--img-size', '160x256', '--num-classes', '7',
                         '--out', str(out)]) == 0
    model, variables = vitjax.load(out)
    assert model.img_size == (160, 256) and model.num_classes == 7
    assert variables['params']['pos_embed'].shape == (1, 1 + 10 * 16, 192)
    assert json.loads((out / 'parity.json').read_text())['pre_logits']['max_abs_diff'] < 1e-4


def test_failed_parity_writes_nothing(deit, capsys):
    d, _ = deit
    out = d / 'strict'
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(d / 'deit.safetensors'),
                         '--model-arg', 'depth=2', '--tolerance', '1e-12', '--out', str(out)]) == 1
    assert 'parity failed; nothing written' in capsys.readouterr().err
    assert not out.exists() and not [p for p in os.listdir(d) if p.startswith('.strict')]


def test_checkpoint_of_another_architecture(deit, capsys):
    d, _ = deit
    out = d / 'wrong'
    assert convert.main(['--model', 'vit_small_patch16_224', '--checkpoint', str(d / 'deit.safetensors'),
                         '--out', str(out)]) == 1
    err = capsys.readouterr().err
    assert 'is not a vit_small_patch16_224 state dict' in err and 'missing: blocks.2.norm1.weight' in err
    assert not out.exists()


def test_bad_checkpoint_files(tmp_path, capsys):
    (tmp_path / 'w.pth').write_bytes(b'not a zip archive')
    (tmp_path / 'w.npz').write_bytes(b'')
    for f, msg in [('missing.safetensors', 'does not exist'), ('w.pth', 'could not be loaded safely'),
                   ('w.npz', 'unsupported checkpoint type')]:
        assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(tmp_path / f),
                             '--out', str(tmp_path / 'o')]) == 1
        assert msg in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


# One registry name per family and per kind of plain ViT (distillation token, MAP head, registers, SwiGLU,
# QuickGELU) through the CLI; tests/hub_zoo.py converts every zoo architecture (the registry's names among them)
# through the same tables at depth 1, and `make parity-table` runs each name at full depth (docs/models.md's table).
CLI_NAMES = ['deit_tiny_distilled_patch16_224', 'vit_base_patch16_siglip_224', 'vit_small_patch14_reg4_dinov2',
             'aimv2_large_patch14_224', 'vit_base_patch16_clip_quickgelu_224', 'swin_tiny_patch4_window7_224',
             'swinv2_tiny_window8_256', 'eva02_tiny_patch14_224', 'beit_base_patch16_224', 'samvit_base_patch16',
             'vit_tiny_r_s16_p8_224', 'vit_relpos_small_patch16_224', 'naflexvit_base_patch16_gap']


# The VLM towers go through the same CLI function in their own files (conftest.convert_and_export).
TOWERS = {f'{t}{e}' for t in ('qwen3_vit', 'deepseek_vit', 'gemma4_vit') for e in ('', '_enc')}


def test_cli_names_cover_every_registry_family():
    zoo = json.load(open(os.path.join(ROOT, 'vitjax', 'zoo.json')))['architectures']
    assert set(CLI_NAMES) <= set(vitjax.list_models())
    assert {zoo[n]['family'] for n in CLI_NAMES} == {zoo[n]['family'] for n in vitjax.list_models()} - TOWERS


@pytest.mark.parametrize('name', CLI_NAMES)
def test_registry_models_convert(tmp_path, name):
    """random-init timm safetensors -> CLI -> parity, one block per stage."""
    (key, value), = ({'depths': (1, 2, 1, 1)} if name.startswith('swin') else {'depth': 1}).items()
    ckpt = random_init.save(random_init.create(name, seed=1, **{key: value}), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), '--model-arg', f'{key}={value}',
                         '--out', str(tmp_path / 'out')]) == 0
    assert json.loads((tmp_path / 'out' / 'parity.json').read_text())['passed']


def test_out_is_never_a_users_files_or_the_input(deit, tmp_path, capsys):
    d, _ = deit
    ckpt = d / 'deit.safetensors'
    before = ckpt.read_bytes()
    (tmp_path / 'keep').mkdir()
    (tmp_path / 'keep' / 'notes.txt').write_text('x')
    (tmp_path / 'file.txt').write_text('x')
    args = ['--model', 'deit_tiny_patch16_224', '--checkpoint', str(ckpt), '--model-arg', 'depth=2', '--out']
    for out, msg in [(tmp_path / 'keep', 'keep is a directory holding notes.txt, not a vitjax model directory'),
                     (tmp_path / 'file.txt', 'file.txt is a file, not a directory'),
                     (ckpt, 'deit.safetensors is the input'), (d, 'contains the input'),
                     (tmp_path / 'file.txt' / 'm', 'file.txt is not a directory'),
                     ('/proc/vitjax-model', '/proc is not writable')]:
        assert convert.main(args + [str(out)]) == 1
        got = capsys.readouterr()
        assert msg in got.err and 'parity' not in got.out  # refused before converting
    assert ckpt.read_bytes() == before and (tmp_path / 'keep' / 'notes.txt').read_text() == 'x'
    assert sorted(os.listdir(tmp_path)) == ['file.txt', 'keep'] and (tmp_path / 'file.txt').read_text() == 'x'
    assert convert.main(args + [str(tmp_path / 'keep' / 'm')]) == 0
    assert convert.main(args + [str(tmp_path / 'keep' / 'm')]) == 0  # a model directory it wrote is replaced
    assert sorted(os.listdir(tmp_path / 'keep')) == ['m', 'notes.txt']


def test_a_failing_write_is_an_error_not_a_traceback(deit, tmp_path, capsys, monkeypatch):
    d, _ = deit

    def full(*a, **k):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr('vitjax.io.save_file', full)
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(d / 'deit.safetensors'),
                         '--model-arg', 'depth=2', '--out', str(tmp_path / 'm')]) == 1
    assert 'error: [Errno 28] No space left on device; nothing written to' in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
