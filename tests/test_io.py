"""Model directories: round trip, adaptation, atomic writes, clear errors."""
import json
import os
import re
import shutil

import jax
import numpy as np
import pytest

import vitjax
from conftest import images, max_diff

NAME = 'deit_tiny_patch16_224'
SMALL = dict(depth=2, img_size=64)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    model, variables = vitjax.create_model(NAME, **SMALL, rng=jax.random.PRNGKey(1))
    variables = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(2), p.shape), variables)
    path = tmp_path_factory.mktemp('m') / 'model'
    vitjax.save(path, model, variables, name=NAME)
    return path, model, variables


def test_round_trip(saved):
    path, model, variables = saved
    assert sorted(os.listdir(path)) == ['config.json', 'params.safetensors']
    loaded, lv = vitjax.load(path)
    assert loaded == model
    x = images(model)
    np.testing.assert_array_equal(loaded.apply(lv, x), model.apply(variables, x))


def test_scan_blocks_load_and_save_keep_the_per_block_layout_on_disk(saved, tmp_path):
    path, model, variables = saved
    scan, sv = vitjax.load(path, scan_blocks=True, num_classes=7)  # adapted first, then stacked
    assert scan.scan_blocks and scan.num_classes == 7 and sv['params']['blocks']['mlp']['fc1']['kernel'].shape[0] == 2
    x = images(model)
    plain, pv = vitjax.load(path, num_classes=7)
    np.testing.assert_allclose(scan.apply(sv, x), plain.apply(pv, x), atol=1e-5)
    vitjax.save(tmp_path / 's', scan, sv, name=NAME)
    cfg = json.loads((tmp_path / 's' / 'config.json').read_text())
    assert cfg['model']['scan_blocks'] is False
    back, bv = vitjax.load(tmp_path / 's')
    assert not back.scan_blocks and 'blocks_1' in bv['params']
    np.testing.assert_array_equal(back.apply(bv, x), plain.apply(pv, x))
    with pytest.raises(ValueError, match='SwinTransformer has no option scan_blocks'):
        vitjax.create_model('swin_tiny_patch4_window7_224', scan_blocks=True)


def test_load_with_new_head_and_size(saved):
    path, model, variables = saved
    m2, v2 = vitjax.load(path, num_classes=5, img_size=(48, 80))
    assert m2.num_classes == 5 and m2.pretrained_cfg.input_size == (3, 48, 80)
    assert v2['params']['pos_embed'].shape == (1, 1 + 3 * 5, 192)
    assert m2.apply(v2, images(m2)).shape == (2, 5)
    np.testing.assert_array_equal(v2['params']['blocks_0']['mlp']['fc1']['kernel'],
                                  variables['params']['blocks_0']['mlp']['fc1']['kernel'])


@pytest.mark.slow
@pytest.mark.parametrize('name', ['deit_tiny_patch16_224', 'eva02_tiny_patch14_224', 'swin_tiny_patch4_window7_224',
                                  'naflexvit_base_patch16_gap'])
def test_a_new_head_on_load_is_what_init_makes(name):
    """Load-time adaptation writes a new head as zeros without initialising the model: every architecture's
    init must give exactly that (its head's kernel_init and bias init), or the two would differ."""
    from vitjax.models import init_variables
    small = (dict(depths=(1, 1), num_heads=(1, 2), embed_dim=16, window_size=4, img_size=32) if name.startswith('swin')
             else dict(depth=1, embed_dim=32, num_heads=2, img_size=32 if 'patch16' in name else 28))
    model = vitjax.registry.build_model(name, num_classes=3, **small)
    head = init_variables(model, jax.random.PRNGKey(3))['params']['head']
    assert {k: float(np.abs(v).max()) for k, v in head.items()} == {'kernel': 0.0, 'bias': 0.0}


def test_create_model_pretrained_dir(saved):
    path, model, variables = saved
    m, v = vitjax.create_model(NAME, pretrained=str(path), num_classes=3)
    assert m.num_classes == 3 and v['params']['head']['kernel'].shape == (192, 3)
    with pytest.raises(ValueError, match='holds'):
        vitjax.create_model('vit_base_patch16_224', pretrained=str(path))


def test_save_is_atomic_and_replaces(tmp_path, saved):
    _, model, variables = saved
    bad = {'params': {k: v for k, v in variables['params'].items() if k != 'norm'}}
    target = tmp_path / 'out'
    with pytest.raises(ValueError, match='missing: norm/scale'):
        vitjax.save(target, model, bad)
    assert os.listdir(tmp_path) == []  # nothing half-written
    vitjax.save(target, model, variables, extra_json={'note.json': {'a': 1}})
    vitjax.save(target, model, variables)  # replacing an existing directory
    assert sorted(os.listdir(tmp_path)) == ['out']
    assert sorted(os.listdir(target)) == ['config.json', 'params.safetensors']


def test_corrupt_or_missing_files_are_named(tmp_path, saved):
    path, _, _ = saved
    with pytest.raises(FileNotFoundError, match='not a vitjax model directory'):
        vitjax.load(tmp_path)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text((path / 'config.json').read_text())
    data = (path / 'params.safetensors').read_bytes()
    (broken / 'params.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='params.safetensors does not match the checksum'):
        vitjax.load(broken)
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit of one weight: safetensors itself cannot tell
    (broken / 'params.safetensors').write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match='params.safetensors does not match the checksum'):
        vitjax.load(broken)
    no_sum = {k: v for k, v in json.loads((path / 'config.json').read_text()).items() if k != 'params_sha256'}
    (broken / 'config.json').write_text(json.dumps(no_sum))  # e.g. written by an older version
    (broken / 'params.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='cannot read .*params.safetensors'):
        vitjax.load(broken)
    cfg = json.loads((path / 'config.json').read_text())
    cfg['model']['embed_dim'] = 96
    cfg['model']['num_heads'] = 3
    (broken / 'config.json').write_text(json.dumps(cfg))
    (broken / 'params.safetensors').write_bytes(data)
    with pytest.raises(ValueError, match='wrong shape'):
        vitjax.load(broken)


def _tiny():
    return vitjax.create_model(NAME, depth=1, img_size=32)


def test_save_replaces_only_a_model_directory_it_wrote(tmp_path):
    model, variables = _tiny()
    (tmp_path / 'keep').mkdir()
    (tmp_path / 'keep' / 'notes.txt').write_text('x')
    (tmp_path / 'file').write_text('x')
    (tmp_path / 'link').symlink_to(tmp_path / 'keep')
    vitjax.save(tmp_path / 'ours', model, variables, extra_json={'note.json': {}})
    (tmp_path / 'ours' / 'README.md').write_text('mine')  # a user's file in a model directory we wrote
    for name, what in [('keep', 'a directory holding notes.txt, not a vitjax model directory'), ('file', 'a file'),
                       ('link', 'a symbolic link'),
                       ('ours', 'a model directory that also holds README.md, which vitjax did not write')]:
        with pytest.raises(ValueError, match=f'{name} is {what}'):
            vitjax.save(tmp_path / name, model, variables)
    assert (tmp_path / 'keep' / 'notes.txt').read_text() == 'x' and (tmp_path / 'file').read_text() == 'x'
    assert sorted(os.listdir(tmp_path / 'ours')) == ['README.md', 'config.json', 'note.json', 'params.safetensors']
    assert sorted(os.listdir(tmp_path)) == ['file', 'keep', 'link', 'ours']  # no temporary left either
    (tmp_path / 'ours' / 'README.md').unlink()
    vitjax.save(tmp_path / 'ours', model, variables)  # everything there is ours (note.json is listed)
    (tmp_path / 'empty').mkdir()
    vitjax.save(tmp_path / 'empty', model, variables)
    cfg = json.loads((tmp_path / 'ours' / 'config.json').read_text())
    legacy = tmp_path / 'legacy'  # written before config.json listed its files
    shutil.copytree(tmp_path / 'ours', legacy)
    (legacy / 'parity.json').write_text('{}')
    (legacy / 'config.json').write_text(json.dumps({k: v for k, v in cfg.items() if k != 'files'}))
    vitjax.save(legacy, model, variables)
    assert cfg['files'] == ['config.json', 'params.safetensors'] and sorted(os.listdir(legacy)) == cfg['files']


def test_output_place_is_checked_before_any_work(tmp_path):
    (tmp_path / 'ckpt.safetensors').write_bytes(b'x')
    (tmp_path / 'hf').mkdir()
    check = vitjax.io.check_writable_model_dir
    with pytest.raises(ValueError, match='the output .*ckpt.safetensors is the input'):
        check(tmp_path / 'ckpt.safetensors', inputs=[tmp_path / 'ckpt.safetensors'])
    with pytest.raises(ValueError, match='ckpt.safetensors is a file, not a directory'):
        check(tmp_path / 'ckpt.safetensors')
    with pytest.raises(ValueError, match='the output .*/hf/out is inside the input .*/hf'):
        check(tmp_path / 'hf' / 'out', inputs=[tmp_path / 'hf'])
    (tmp_path / 'new').mkdir()
    (tmp_path / 'new' / 'w.safetensors').symlink_to(tmp_path / 'ckpt.safetensors')
    with pytest.raises(ValueError, match='not a vitjax model directory'):
        check(tmp_path / 'new', inputs=[tmp_path / 'new' / 'w.safetensors'])
    os.unlink(tmp_path / 'new' / 'w.safetensors')
    (tmp_path / 'x' / 'y').mkdir(parents=True)
    with pytest.raises(ValueError, match='the output .*/x contains the input'):
        vitjax.io.check_place(tmp_path / 'x', inputs=[tmp_path / 'x' / 'y'])
    with pytest.raises(ValueError, match='ckpt.safetensors is not a directory'):
        check(tmp_path / 'ckpt.safetensors' / 'sub' / 'out')
    with pytest.raises(ValueError, match='/proc is not writable'):
        check('/proc/vitjax-out')
    with pytest.raises(ValueError, match='name the model directory itself'):
        check(tmp_path / 'x' / '..')
    check(tmp_path / 'a' / 'b' / 'c', inputs=[tmp_path / 'ckpt.safetensors', None, tmp_path / 'missing'])
    assert sorted(os.listdir(tmp_path)) == ['ckpt.safetensors', 'hf', 'new', 'x']  # checking writes nothing


KILL = """
import os, signal, sys
import vitjax
from vitjax import io
target, where = sys.argv[1], sys.argv[2]
model, variables = vitjax.create_model('deit_tiny_patch16_224', depth=1, img_size=32, num_classes=3)
die = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
if where == 'writing':  # params written, config not yet
    real_save = io.save_file
    io.save_file = lambda *a, **k: (real_save(*a, **k), die())
elif where == 'swapped':  # new copy in place, old one not yet deleted
    real_exchange = io._exchange
    io._exchange = lambda a, b: (real_exchange(a, b), die())
else:  # no renameat2: the old copy moved away, the new one not yet in place
    io._exchange = lambda a, b: False
    real_replace, calls = os.replace, []
    os.replace = lambda a, b: (real_replace(a, b), calls.append(b), len(calls) == 1 and die())
vitjax.save(target, model, variables)
"""


@pytest.mark.parametrize('where', ['writing', 'swapped', 'between_renames'])
def test_kill_9_during_save_is_recovered(tmp_path, where):
    import subprocess
    import sys
    model, variables = _tiny()
    target = tmp_path / 'out'
    vitjax.save(target, model, variables)
    proc = subprocess.run([sys.executable, '-c', KILL, str(target), where], capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(os.listdir(tmp_path)) == 2  # `out` (or, between the renames, `.out.old`) and a hidden copy
    got, _ = vitjax.load(target)  # between the renames `out` is missing: load restores the old copy
    assert got.num_classes == (3 if where == 'swapped' else 1000)
    vitjax.save(target, model, variables)
    assert os.listdir(tmp_path) == ['out']  # the next save clears what the kill left


def test_modes_follow_the_umask(tmp_path):
    model, variables = _tiny()
    old = os.umask(0o022)
    try:
        vitjax.save(tmp_path / 'shared', model, variables)
        os.umask(0o077)
        vitjax.save(tmp_path / 'private', model, variables)
    finally:
        os.umask(old)
    mode = lambda p: os.stat(p).st_mode & 0o777
    assert mode(tmp_path / 'shared') == 0o755 and mode(tmp_path / 'private') == 0o700
    assert {mode(p) for p in (tmp_path / 'shared').iterdir()} == {0o644}
    assert {mode(p) for p in (tmp_path / 'private').iterdir()} == {0o600}


@pytest.mark.parametrize('change, msg', [
    (dict(depth=10 ** 6), 'depth=1000000: must be in 1..1000'),
    (dict(depth='2'), "depth='2': must be an integer"),
    (dict(depth=True), 'depth=True: must be an integer'),
    (dict(embed_dim=0, num_heads=0), 'embed_dim=0: must be in 1..65536; num_heads=0: must be >= 1'),
    (dict(num_heads=5), 'num_heads=5: must be >= 1 and divide embed_dim=192'),
    (dict(patch_size=128), 'patch_size=128 is larger than img_size=64'),
    (dict(img_size=[64, 64, 64]), r'img_size=\(64, 64, 64\): one or two sizes'),
    (dict(mlp_ratio=None), 'mlp_ratio=None: must be a finite number'),
    (dict(num_classes=-1, mlp_ratio=0), r'num_classes=-1: must be >= 0.*mlp_ratio=0: must be in \(0, 64\]'),
    (dict(drop_path_rate=float('nan')), 'drop_path_rate=nan: must be a finite number'),
    (dict(global_pool='mean', act_layer='relu'), "act_layer='relu': one of .*global_pool='mean'"),
    (dict(depths=[2]), "depths: unknown field"),
    ({'pretrained_cfg.std': [0, 0, 0]}, r'pretrained_cfg.std=\(0, 0, 0\): must be > 0'),
    ({'pretrained_cfg.mean': [0.5, 0.5]}, 'pretrained_cfg.mean=.*: must be a list of 3 finite numbers'),
    ({'pretrained_cfg.crop_pct': 0}, r'crop_pct=0: must be in \(0, 2\]'),
    ({'pretrained_cfg.input_size': [3, 224]}, 'input_size=.*: must be a list of 3 integers'),
    ({'model': [1]}, "'model' and 'pretrained_cfg' must be JSON objects"),
])
def test_config_is_validated_on_load(saved, tmp_path, change, msg):
    path, _, _ = saved
    shutil.copytree(path, tmp_path / 'm')
    cfg = json.loads((path / 'config.json').read_text())
    for k, v in change.items():
        if k == 'model':
            cfg['model'] = v
        elif k.startswith('pretrained_cfg.'):
            cfg['pretrained_cfg'][k.split('.')[1]] = v
        else:
            cfg['model'][k] = v
    (tmp_path / 'm' / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match='config.json: ') as e:
        vitjax.load(tmp_path / 'm')
    assert str(tmp_path / 'm' / 'config.json') in str(e.value) and '\n' not in str(e.value)
    assert re.search(msg, str(e.value)), str(e.value)


@pytest.mark.slow
def test_swin_config_is_validated(tmp_path):
    model, variables = vitjax.create_model('swin_tiny_patch4_window7_224', depths=(1, 1, 1, 1), img_size=64,
                                           window_size=4)
    vitjax.save(tmp_path / 's', model, variables)
    cfg = json.loads((tmp_path / 's' / 'config.json').read_text())
    cfg['model'].update(depths=[1, 0, 1, 10 ** 6], num_heads=[3, 6], window_size=[[4, 4], [4, 1000]])
    (tmp_path / 's' / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError) as e:
        vitjax.load(tmp_path / 's')
    for msg in ['depths=(1, 0, 1, 1000000): 1..8 stages of >= 1 blocks', 'num_heads=(3, 6): one count >= 1 per stage',
                'window_size=((4, 4), (4, 1000)): sizes in 1..64']:
        assert msg in str(e.value)


def test_config_json_that_is_not_an_object_or_bad_extra_names(saved, tmp_path):
    path, model, variables = saved
    shutil.copytree(path, tmp_path / 'm')
    (tmp_path / 'm' / 'config.json').write_text('[1, 2]')
    with pytest.raises(ValueError, match=r'config.json is not a vitjax config \(format=None\)'):
        vitjax.load(tmp_path / 'm')
    with pytest.raises(ValueError, match=r"extra_json names must be plain \*.json file names, got \['../x.json'\]"):
        vitjax.save(tmp_path / 'n', model, variables, extra_json={'../x.json': {}})
    assert sorted(os.listdir(tmp_path)) == ['m']


def _with_params(saved, tmp_path, change):
    """A copy of the saved model whose params.safetensors holds `change(flat params)`, its checksum updated."""
    from safetensors.numpy import load_file, save_file
    path, d = saved[0], tmp_path / 'm'
    shutil.copytree(path, d)
    save_file(change(load_file(str(path / 'params.safetensors'))), str(d / 'params.safetensors'))
    cfg = json.loads((d / 'config.json').read_text())
    (d / 'config.json').write_text(json.dumps({**cfg, 'params_sha256': vitjax.io.sha256(d / 'params.safetensors')}))
    return d


def test_params_of_other_dtypes_are_refused_naming_the_file_and_keys(saved, tmp_path):
    d = _with_params(saved, tmp_path, lambda f: {k: v.astype(np.int8) if k.startswith('blocks_') else
                                                 v.astype(bool) if k == 'norm/scale' else v for k, v in f.items()})
    with pytest.raises(ValueError) as e:
        vitjax.load(d)
    msg = str(e.value)
    assert str(d / 'params.safetensors') in msg and 'params must be floats' in msg, msg
    assert 'int8: blocks_0/attn/key/bias' in msg and 'bool: norm/scale' in msg and ' more' in msg, msg
    _, model, variables = saved  # save refuses what load would refuse
    bad = jax.tree.map(lambda v: np.asarray(v).astype(np.int8), variables)
    with pytest.raises(ValueError, match='params to save: .*int8: blocks_0'):
        vitjax.save(tmp_path / 'out', model, bad)
    assert not (tmp_path / 'out').exists()


def test_half_precision_params_are_cast_to_float32_with_a_note(saved, tmp_path, capsys):
    import ml_dtypes
    _, model, variables = saved
    for dtype in (np.float16, ml_dtypes.bfloat16):
        shutil.rmtree(tmp_path / 'm', ignore_errors=True)
        d = _with_params(saved, tmp_path, lambda f: {k: v.astype(dtype) for k, v in f.items()})
        loaded, lv = vitjax.load(d)
        assert {x.dtype for x in jax.tree.leaves(lv)} == {np.dtype(np.float32)}
        want = jax.tree.map(lambda v: np.asarray(v).astype(dtype).astype(np.float32), variables)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(lv), jax.tree.leaves(want)))
        note = capsys.readouterr().err
        assert note.count('\n') == 1 and str(d / 'params.safetensors') in note, note
        assert f'{np.dtype(dtype).name} params cast to float32' in note, note


def test_non_finite_params_are_refused_naming_the_keys(saved, tmp_path):
    def poison(f):
        f = {k: v.copy() for k, v in f.items()}
        f['blocks_1/mlp/fc2/kernel'][0, 3] = np.nan
        f['norm/bias'][-1] = -np.inf
        return f
    d = _with_params(saved, tmp_path, poison)
    with pytest.raises(ValueError) as e:
        vitjax.load(d)
    msg = str(e.value)
    assert str(d / 'params.safetensors') in msg and 'non-finite' in msg, msg
    assert 'blocks_1/mlp/fc2/kernel (1 NaN)' in msg and 'norm/bias (1 Inf)' in msg, msg
    huge = _with_params(saved, tmp_path / 'h', lambda f: {**f, 'norm/bias': np.full_like(f['norm/bias'], 1e300,
                                                                                         np.float64)})
    with pytest.raises(ValueError, match=r'non-finite.*norm/bias \(192 Inf\)'):  # float64 beyond float32's range
        vitjax.load(huge)


def test_a_url_to_write_is_refused_not_written_under_the_cwd(saved, tmp_path, monkeypatch):
    _, model, variables = saved
    monkeypatch.chdir(tmp_path)
    for write in (lambda: vitjax.save('gs://bucket/m', model, variables),
                  lambda: vitjax.io.check_writable_model_dir('gs://bucket/m'),
                  lambda: vitjax.io.write_file('gs://bucket/f.npz', lambda tmp: None, lambda p: True)):
        with pytest.raises(ValueError, match='cannot write gs://bucket/.*: vitjax writes model directories and '
                                             'output files locally'):
            write()
    assert os.listdir(tmp_path) == []


# Written by vitjax 0.1.0 at 56d520f, before the family registry (vitjax/models/family.py) and the porting rows
# moved into the family files; perturbed random weights, and their logits on a fixed input.
OLD_DIRS = os.path.join(os.path.dirname(__file__), 'data', 'model_dirs_0.1')


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['vit', 'eva', 'swin', 'naflexvit'])
def test_model_directories_written_before_the_family_registry_still_load(arch):
    model, variables = vitjax.load(os.path.join(OLD_DIRS, arch))
    assert json.load(open(os.path.join(OLD_DIRS, arch, 'config.json')))['architecture'] == arch
    h, w = vitjax.models.img_size_of(model)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)[:, :h, :w]
    with jax.default_matmul_precision('highest'):
        np.testing.assert_allclose(jax.jit(model.apply)(variables, x), np.load(os.path.join(OLD_DIRS, 'logits.npz'))[arch],
                                   rtol=1e-5, atol=1e-5)
