"""Pretrained timm weights from a Hugging Face hub cache, loaded without torch: the real `hf_hub_download`
code path over repos written by timm's own `save_for_hf` (tests/hubcache.py), with HF_HUB_OFFLINE=1.

The torch-free side runs in a subprocess in which importing torch or timm raises; its outputs are compared
here with timm's own model loading the same file (`pretrained=True` with the file as its source), so timm's
load-time changes (a new head, a resampled position grid, in_chans adaptation) are the reference too."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import hubcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'vit_tiny_patch16_224.augreg_in21k_ft_in1k'


def torch_free(cache, code: str, **inputs) -> dict:
    """Run `code` with `vitjax` imported and torch/timm unimportable; it fills `out` (a dict of arrays)."""
    d = os.path.join(str(cache), '_io')
    os.makedirs(d, exist_ok=True)
    np.savez(os.path.join(d, 'in.npz'), **inputs)
    script = textwrap.dedent('''
        import sys
        for m in ('torch', 'timm', 'torchvision'):
            sys.modules[m] = None          # any import of them raises ImportError
        import json, numpy as np, jax
        jax.config.update('jax_default_matmul_precision', 'highest')
        import vitjax
        inp = dict(np.load(sys.argv[1]))
        out = {}
    ''') + textwrap.dedent(code) + textwrap.dedent('''
        assert not any(sys.modules.get(m) for m in ('torch', 'timm')), 'torch was imported'
        np.savez(sys.argv[2], **{k: np.asarray(v) for k, v in out.items()})
    ''')
    proc = subprocess.run([sys.executable, '-c', script, os.path.join(d, 'in.npz'), os.path.join(d, 'out.npz')],
                          cwd=ROOT, env=hubcache.offline_env(cache), capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise AssertionError(proc.stderr[-4000:])
    return dict(np.load(os.path.join(d, 'out.npz'))), proc


def timm_logits(model, x):
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()


def timm_from(paths, name, **kw):
    import timm
    return timm.create_model(name.split('.')[0], pretrained=True,
                             pretrained_cfg_overlay=dict(file=paths['model.safetensors']), **kw).eval()


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
    c = tmp_path_factory.mktemp('hf')
    paths = hubcache.add(c, NAME, depth=2)
    return c, paths


def _x(h=224, w=224, c=3, n=2):
    return np.random.default_rng(0).standard_normal((n, h, w, c)).astype(np.float32)


def test_loads_torch_free_and_matches_timm(cache):
    c, paths = cache
    x = _x()
    out, _ = torch_free(c, f'''
        m, v = vitjax.load('hf-hub:timm/{NAME}')
        out['logits'] = m.apply(v, inp['x'])
        m2, v2 = vitjax.create_model('{NAME}', pretrained=True)
        out['same'] = np.float32(all(np.array_equal(a, b) for a, b in
                                     zip(jax.tree.leaves(v), jax.tree.leaves(v2))))
        out['mean'] = np.asarray(m.pretrained_cfg.mean)
        out['crop'] = np.float32(m.pretrained_cfg.crop_pct)
    ''', x=x)
    ref = timm_logits(paths['model'], x)
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(out['logits'], ref, rtol=0, atol=tol)
    assert out['same'] == 1.0  # create_model(pretrained=True) and load('hf-hub:...') are one path
    assert out['mean'].tolist() == [0.5, 0.5, 0.5] and abs(out['crop'] - 0.9) < 1e-7  # the tag's own cfg


def test_params_equal_porting_convert_bit_for_bit(cache, tmp_path):
    from porting import convert
    c, paths = cache
    assert convert.main(['--model', NAME.split('.')[0], '--checkpoint', paths['model.safetensors'],
                         '--model-arg', 'depth=2', '--out', str(tmp_path / 'conv')]) == 0
    out, _ = torch_free(c, f'''
        from vitjax.io import flatten
        for k, a in flatten(vitjax.load('hf-hub:timm/{NAME}')[1]['params']).items():
            out[k] = a
    ''')
    import vitjax
    from vitjax.io import flatten
    conv = flatten(vitjax.load(tmp_path / 'conv')[1]['params'])
    assert conv.keys() == out.keys()
    assert all(np.array_equal(conv[k], out[k]) for k in conv)


def test_load_time_changes_match_timm(cache):
    """num_classes (a new head), img_size (position grid resampled), in_chans (timm's adapt_input_conv)."""
    c, paths = cache
    x, x1, x4 = _x(160, 160), _x(c=1), _x(c=4)
    out, _ = torch_free(c, f'''
        m, v = vitjax.create_model('{NAME}', pretrained=True, img_size=160)
        out['resized'] = m.apply(v, inp['x'])
        for n in (1, 4):
            m, v = vitjax.create_model('{NAME}', pretrained=True, in_chans=n)
            out[f'in{{n}}'] = m.apply(v, inp[f'x{{n}}'])
        m, v = vitjax.create_model('{NAME}', pretrained=True, num_classes=7)
        out['head'] = m.apply(v, inp['x224'])
        out['feat7'] = m.apply(v, inp['x224'], method=m.forward_features)
        m, v = vitjax.create_model('{NAME}', pretrained=True)
        out['feat'] = m.apply(v, inp['x224'], method=m.forward_features)
    ''', x=x, x1=x1, x4=x4, x224=_x())
    ref = timm_logits(timm_from(paths, NAME, depth=2, img_size=160), x)
    np.testing.assert_allclose(out['resized'], ref, atol=1e-4 * max(1, np.abs(ref).max()))
    for n, xi in ((1, x1), (4, x4)):
        ref = timm_logits(timm_from(paths, NAME, depth=2, in_chans=n), xi)
        np.testing.assert_allclose(out[f'in{n}'], ref, atol=1e-4 * max(1, np.abs(ref).max()), err_msg=f'in_chans={n}')
    assert out['head'].shape == (2, 7) and np.array_equal(out['feat7'], out['feat'])  # the backbone as is


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_precision_files_load(tmp_path, dtype):
    name = 'deit_tiny_patch16_224.fb_in1k'
    paths = hubcache.add(tmp_path, name, dtype=dtype, depth=1)
    x = _x()
    out, proc = torch_free(tmp_path, f'''
        m, v = vitjax.create_model('{name}', pretrained=True)
        out['logits'] = m.apply(v, inp['x'])
    ''', x=x)
    ref = timm_logits(paths['model'].to(dtype).float(), x)  # the rounded weights, in f32
    np.testing.assert_allclose(out['logits'], ref, atol=1e-4 * max(1, np.abs(ref).max()))


def test_bad_repos_are_one_clear_error(tmp_path):
    """Only pytorch_model.bin; a truncated download (evicted, not cached as good); not in an offline cache;
    an unknown revision; an architecture vitjax does not convert."""
    c = tmp_path
    hubcache.add(c, 'deit_tiny_patch16_224.fb_in1k', files=('config.json', 'pytorch_model.bin'), depth=1)
    trunc = hubcache.add(c, 'deit_small_patch16_224.fb_in1k', depth=1)
    blob = os.path.realpath(trunc['model.safetensors'])
    data = open(blob, 'rb').read()
    open(blob, 'wb').write(data[:len(data) // 2])
    code = '''
        import traceback
        for name in inp['names']:
            try:
                vitjax.load(str(name))
                print('LOADED', name)
            except ValueError as e:
                print('ERROR', name, '|', str(e).replace(chr(10), ' '))
    '''
    names = np.array(['hf-hub:timm/deit_tiny_patch16_224.fb_in1k', 'hf-hub:timm/deit_small_patch16_224.fb_in1k',
                      'deit_base_patch16_224.fb_in1k', 'hf-hub:timm/deit_tiny_patch16_224.fb_in1k@0123abcd',
                      'vit_base_patch16_rpn_224.sw_in1k'])
    _, proc = torch_free(c, code, names=names)
    lines = {l.split(' ')[1]: l for l in proc.stdout.splitlines() if l.startswith(('ERROR', 'LOADED'))}
    assert len(lines) == 5 and not any(l.startswith('LOADED') for l in lines.values()), proc.stdout
    assert 'only a pickled pytorch_model.bin' in lines[names[0]] and 'porting.convert' in lines[names[0]]
    assert 'removed it from the cache' in lines[names[1]]
    assert not os.path.exists(blob) and not os.path.lexists(trunc['model.safetensors'])
    assert 'not in the huggingface_hub cache' in lines[names[2]] and 'HF_HUB_OFFLINE' in lines[names[2]]
    assert 'not in the huggingface_hub cache' in lines[names[3]]
    assert 'does not convert' in lines[names[4]]


def test_a_pinned_revision_is_the_one_loaded(tmp_path):
    name = 'deit_tiny_patch16_224.fb_in1k'
    main = hubcache.add(tmp_path, name, seed=0, depth=1)
    pinned = hubcache.add(tmp_path, name, seed=1, depth=1, revision='1' * 40)
    x = _x()
    out, _ = torch_free(tmp_path, f'''
        for key, spec in (('main', 'hf-hub:timm/{name}'), ('pinned', 'hf-hub:timm/{name}@{'1' * 40}')):
            m, v = vitjax.load(spec)
            out[key] = m.apply(v, inp['x'])
        m, v = vitjax.create_model('{name}', pretrained=True, revision='{'1' * 40}')
        out['kw'] = m.apply(v, inp['x'])
    ''', x=x)
    for key, paths in (('main', main), ('pinned', pinned), ('kw', pinned)):
        ref = timm_logits(paths['model'], x)
        np.testing.assert_allclose(out[key], ref, atol=1e-4 * max(1, np.abs(ref).max()), err_msg=key)


def test_porting_verify_runs_the_parity_proof_on_hub_weights(cache):
    """With torch at hand, `python -m porting.verify NAME`: timm's own hub loading against vitjax's, both from the
    one cache. A damaged mapping would fail it: the weights timm loads are the ones in the file."""
    c, _ = cache
    proc = subprocess.run([sys.executable, '-m', 'porting.verify', NAME, '--json'], cwd=ROOT,
                          env=hubcache.offline_env(c), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert report['passed'] and report['max_abs_diff'] <= report['tolerance'] and report['max_abs_logit'] > 0
    bad = subprocess.run([sys.executable, '-m', 'porting.verify', 'vit_nonexistent_patch16_224'], cwd=ROOT,
                         env=hubcache.offline_env(c), capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1 and bad.stderr.startswith('error: ') and 'Traceback' not in bad.stderr


def test_predict_prints_the_tags_class_names(cache, tmp_path):
    """`vitjax predict --model hf-hub:timm/<tag> image.jpg`: top-5 with the names of the tag's label set."""
    from PIL import Image
    c, _ = cache
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 60, 3), np.uint8)).save(tmp_path / 'x.jpg')
    env = hubcache.offline_env(c)
    code = 'import sys; sys.modules["torch"] = None; from vitjax import cli; sys.exit(cli.main(sys.argv[1:]))'
    proc = subprocess.run([sys.executable, '-c', code, 'predict', '--model', f'hf-hub:timm/{NAME}',
                           str(tmp_path / 'x.jpg'), '--json'], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = json.loads(proc.stdout)[0]['top']
    from vitjax import labels
    names = labels.names('imagenet-1k')
    assert len(top) == 5 and all(t['label'] in names for t in top), top


def test_nnx_face_fine_tunes_hub_weights(cache):
    """vitjax.nnx: hub weights as an nnx.Module (Flax's bridge) computing what the Linen model does, and a few
    nnx.Optimizer steps of a new 3-class head lower the loss."""
    c, _ = cache
    out, _ = torch_free(c, f'''
        import optax
        from flax import nnx
        import vitjax.nnx
        linen, v = vitjax.create_model('{NAME}', pretrained=True)
        m = vitjax.nnx.create_model('{NAME}', pretrained=True)
        out['diff'] = np.abs(m(inp['x']) - linen.apply(v, inp['x'])).max()
        m = vitjax.nnx.create_model('{NAME}', pretrained=True, num_classes=3)
        opt = nnx.Optimizer(m, optax.adamw(1e-3), wrt=nnx.Param)
        y = np.array([0, 1])

        @nnx.jit
        def step(m, opt, x, y):
            loss, g = nnx.value_and_grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(m)
            opt.update(m, g)
            return loss
        out['losses'] = np.array([float(step(m, opt, inp['x'], y)) for _ in range(6)])
    ''', x=_x())
    assert out['diff'] == 0.0
    assert abs(out['losses'][0] - np.log(3)) < 1e-5 and out['losses'][-1] < 0.5 * out['losses'][0], out['losses']


@pytest.mark.slow
def test_train_init_features_and_attention_take_a_hub_name(cache, tmp_path):
    """`train.py --config.init=NAME` fine-tunes hub weights (new 10-way head, grid resampled, backbone frozen
    here, so it must come out unchanged) and `vitjax features|attention --model NAME` read the same name."""
    from PIL import Image

    import vitjax
    from vitjax.io import flatten
    c, _ = cache
    env = hubcache.offline_env(c)
    proc = subprocess.run([sys.executable, 'train.py', f'--workdir={tmp_path / "ft"}', f'--config.init={NAME}',
                           '--config.image_size=32', '--config.trainable=^head', '--config.total_steps=4',
                           '--config.warmup_steps=1', '--config.eval_every=4', '--config.batch_size=16',
                           f'--config.data_dir={tmp_path / "tfds"}'], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'has a 1000-class head, the dataset has 10 classes' in proc.stdout
    out, _ = torch_free(c, f'''
        from vitjax.io import flatten
        for k, a in flatten(vitjax.load('{NAME}')[1]['params']).items():
            out[k] = a
    ''')
    model, tuned = vitjax.load(tmp_path / 'ft' / 'model')
    tuned = flatten(tuned['params'])
    assert (model.num_classes, model.img_size) == (10, 32)
    assert tuned.keys() == out.keys()
    assert [k for k in out if not k.startswith(('head', 'pos_embed')) and not np.array_equal(out[k], tuned[k])] == []
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / 'x.png')
    code = 'import sys; sys.modules["torch"] = None; from vitjax import cli; sys.exit(cli.main(sys.argv[1:]))'
    for cmd in (['features', '--model', NAME, str(tmp_path / 'x.png'), '--out', str(tmp_path / 'f.npz')],
                ['attention', '--model', f'hf-hub:timm/{NAME}', str(tmp_path / 'x.png'), '--out',
                 str(tmp_path / 'a.png')]):
        proc = subprocess.run([sys.executable, '-c', code, *cmd], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (cmd[0], proc.stderr[-3000:])
    assert np.load(tmp_path / 'f.npz')['pooled'].shape == (1, 192)
    assert Image.open(tmp_path / 'a.png').size[0] > 0
