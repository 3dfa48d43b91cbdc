"""Model-level faults, tried as a hostile user would (issue 39, items 5, 9, 10): the NNX face's optimizer recipe
must leave timm's buffers alone; train.py refuses an encoder without a head, and the sizes a family cannot take
(SAM's whole patches, a hybrid's ResNet map, a dynamic model's whole patches), with one clear error before
anything is read or written; `vitjax.load`, `create_model`, `porting.convert` and `porting.export` refuse those
sizes too. Depth-1 models; hub repos from timm's own `save_for_hf` in an offline cache (tests/hubcache.py)."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import hubcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QWEN_ENC, QWEN_CLS = 'qwen3_vit_88m_enc.qwen3_5_0_8b', 'qwen3_vit_88m.qwen3_5_0_8b'


# -- item 5: the NNX face keeps timm's buffers out of nnx.Param ---------------------------------------------------

def test_nnx_optimizer_recipe_leaves_gemma4_buffers_alone():
    """The docstring's recipe (nnx.Optimizer(m, adamw, wrt=nnx.Param), nnx.value_and_grad) for 3 steps on a tiny
    Gemma 4 classifier with both kinds of buffer, set to bounds that cut and a standardization away from identity:
    every Param moves, all 30 buffers stay bit for bit, the module computes what the Linen model does, and
    `to_linen` gives them back with the rest."""
    import optax
    from flax import nnx, traverse_util

    import vitjax
    import vitjax.nnx
    from vitjax.models import BUFFERS
    small = dict(depth=1, embed_dim=64, num_heads=2, head_dim=32, intermediate_size=128, position_embedding_size=64)
    model, v = vitjax.create_model('gemma4_vit_570m', num_classes=3, img_size=96, use_clipped_linears=True,
                                   encoder_pool='soft', **small)
    rng = np.random.default_rng(0)
    flat = traverse_util.flatten_dict(v['params'], sep='/')
    bufs = sorted(k for k in flat if any(re.search(b, k) for b in BUFFERS))
    for k in bufs:
        flat[k] = (np.float32(-1.) if k.endswith('_min') else np.float32(1.) if k.endswith('_max') else
                   rng.uniform(0.5, 1.5, flat[k].shape).astype(np.float32) if k.endswith('std_scale') else
                   rng.normal(0, 0.1, flat[k].shape).astype(np.float32))
    flat['head/kernel'] = rng.normal(0, 0.1, flat['head/kernel'].shape).astype(np.float32)
    v = {'params': traverse_util.unflatten_dict(flat, sep='/')}
    x, y = rng.uniform(0, 1, (2, 96, 96, 3)).astype(np.float32), np.array([0, 1])
    m = vitjax.nnx.to_nnx(model, v)
    assert np.array_equal(m(x), model.apply(v, x))

    opt = nnx.Optimizer(m, optax.adamw(1e-2), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt, x, y):
        loss, g = nnx.value_and_grad(lambda m: optax.softmax_cross_entropy_with_integer_labels(m(x), y).mean())(m)
        opt.update(m, g)
        return loss
    losses = [float(step(m, opt, x, y)) for _ in range(3)]
    after = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(m)), sep='/')
    assert len(bufs) == 30 and losses[-1] < losses[0], losses
    assert [k for k in bufs if not np.array_equal(after[k], flat[k])] == []
    assert all(not np.array_equal(after[k], flat[k]) for k in flat if k not in bufs)
    linen, back = vitjax.nnx.to_linen(m)
    got = traverse_util.flatten_dict(back['params'], sep='/')
    assert linen is model and set(got) == set(flat) and all(np.array_equal(got[k], flat[k]) for k in bufs)
    assert np.array_equal(m(x), model.apply(back, x))
    m(x, mutable=['intermediates'])  # attention maps kept on the module beside its variables, which stay
    assert np.array_equal(m(x), model.apply(back, x))


# -- item 9: train.py and an encoder without a head ---------------------------------------------------------------

@pytest.fixture(scope='module')
def qwen_cache(tmp_path_factory):
    c = tmp_path_factory.mktemp('hf')
    for name in (QWEN_ENC, QWEN_CLS):
        hubcache.add(c, name, depth=1)
    return c


@pytest.fixture
def offline(qwen_cache, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(qwen_cache))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return qwen_cache


def _config(**changes):
    from vitjax.train.config import default_config
    c = default_config()
    for k, v in changes.items():
        setattr(c, k, v)
    return c


@pytest.mark.parametrize('field, name, way_out', [
    ('init', QWEN_ENC, f'--config.init={QWEN_CLS} (or qwen3_vit_88m_merge.qwen3_5_0_8b)'),
    ('init', 'gemma4_vit_167m_enc.gemma4_e4b_it', '--config.init=gemma4_vit_167m.gemma4_e4b_it'),
    ('init', 'hf-hub:timm/deepseek_vit_412m_enc.deepseek_v4_1_flash',
     '--config.init=deepseek_vit_412m.deepseek_v4_1_flash (or deepseek_vit_412m_align.deepseek_v4_1_flash)'),
    ('model', 'qwen3_vit_88m_enc', '--config.model=qwen3_vit_88m (or qwen3_vit_88m_merge)'),
], ids=['qwen3', 'gemma4', 'deepseek-hf-hub', 'registry-name'])
def test_train_refuses_an_encoder_with_the_way_out(offline, field, name, way_out):
    """Config validation (before a workdir exists) and the trainer's model building say the same one thing,
    naming the classifier over the same tower; without a dataset at hand --compile_only's fallback too."""
    from vitjax.train import trainer
    from vitjax.train.config import validate
    c = _config(**{field: name})
    for refuse in (lambda: validate(c), lambda: trainer.initial_model(c, 10), lambda: trainer.initial_model(c, None)):
        with pytest.raises(ValueError, match='an encoder without a head') as e:
            refuse()
        assert str(e.value).endswith(way_out), str(e.value)


def test_train_takes_the_classifier_and_refuses_an_encoder_directory(offline, tmp_path):
    """The way out builds (a 10-class head on the hub weights); an encoder saved as a model directory is refused
    by what its config.json says, with the same way out."""
    import vitjax
    from vitjax.train import trainer
    from vitjax.train.config import validate
    c = _config(init=QWEN_CLS)
    validate(c)
    model, variables = trainer.initial_model(c, 10)
    assert type(model).__name__ == 'Qwen3VitClassifier' and variables['params']['head']['kernel'].shape[-1] == 10
    vitjax.save(tmp_path / 'enc', *vitjax.load(QWEN_ENC), name=QWEN_ENC)
    c = _config(init=str(tmp_path / 'enc'))
    for refuse in (lambda: validate(c), lambda: trainer.initial_model(c, 10)):
        with pytest.raises(ValueError, match=f'an encoder without a head.*--config.init={re.escape(QWEN_CLS)}'):
            refuse()


def test_train_py_refuses_an_encoder_before_writing(qwen_cache, tmp_path):
    proc = subprocess.run([sys.executable, 'train.py', f'--config.init={QWEN_ENC}', f'--workdir={tmp_path / "run"}'],
                          cwd=ROOT, env=hubcache.offline_env(qwen_cache), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert f'an encoder without a head' in proc.stderr and f'--config.init={QWEN_CLS}' in proc.stderr
    assert not (tmp_path / 'run').exists()


# -- item 10: sizes a family cannot take ---------------------------------------------------------------------------

def _timm_takes(name, size, **kwargs) -> bool:
    import timm
    import torch
    h, w = (size, size) if isinstance(size, int) else size
    try:
        with torch.no_grad():
            timm.create_model(name, img_size=size, **kwargs).eval()(torch.zeros(1, 3, h, w))
        return True
    except (AssertionError, RuntimeError, ValueError):
        return False


@pytest.mark.parametrize('name, kwargs, size', [
    ('samvit_base_patch16', dict(depth=1), 40), ('samvit_base_patch16', dict(depth=1), (48, 56)),
    ('samvit_base_patch16', dict(depth=1), (48, 64)),
    ('vit_tiny_r_s16_p8_224', dict(depth=1), 40), ('vit_tiny_r_s16_p8_224', dict(depth=1), 48),
    ('vit_tiny_r_s16_p8_224', dict(depth=1), (64, 100)), ('vit_tiny_r_s16_p8_224', dict(depth=1), (61, 96)),
    ('vit_small_r26_s32_224', dict(depth=1), 40),
    ('vit_tiny_patch16_224', dict(depth=1, dynamic_img_size=True), 40),
    ('vit_tiny_patch16_224', dict(depth=1, dynamic_img_size=True), 48),
    ('vit_tiny_patch16_224', dict(depth=1), 40),
])
def test_a_size_is_refused_up_front_exactly_when_timm_refuses_it(name, kwargs, size):
    """The family's range check (what config.json loading, `create_model`, `vitjax.load` and train.py's config
    validation run) refuses the sizes timm's constructor or forward refuses, and only those."""
    import vitjax
    from vitjax import registry
    from vitjax.models.family import problems
    found = problems(registry.build_model(name, **kwargs).clone(img_size=size))
    assert (not found) == _timm_takes(name, size, **kwargs), found
    if found:
        assert all('img_size' in p for p in found), found
        with pytest.raises(ValueError, match='img_size'):
            vitjax.create_model(name, img_size=size, **kwargs)


@pytest.fixture(scope='module')
def sam_dir(tmp_path_factory):
    import vitjax
    d = tmp_path_factory.mktemp('sam') / 'm'
    model, variables = vitjax.create_model('samvit_base_patch16', img_size=32, depth=1, global_attn_indexes=(),
                                           embed_dim=64, num_heads=2, neck_chans=32, num_classes=3)
    vitjax.save(d, model, variables, name='samvit_base_patch16')
    return d


def test_load_and_train_refuse_a_sam_size_before_any_work(sam_dir):
    import vitjax
    from vitjax.train.config import validate
    with pytest.raises(ValueError, match=r'img_size=40: must be a multiple of patch_size=16'):
        vitjax.load(sam_dir, img_size=40)
    for c in (_config(init='samvit_base_patch16.sa1b', image_size=20), _config(init=str(sam_dir), image_size=20),
              _config(model='vit_tiny_r_s16_p8_224', image_size=40)):
        with pytest.raises(ValueError, match=r'invalid config:\n.* at image size (20|40): img_size='):
            validate(c)
    validate(_config(init=str(sam_dir), image_size=48))


def test_convert_refuses_the_size_before_reading_weights(tmp_path, capsys):
    """--img-size is checked against the architecture before the checkpoint is read (here it is not even a
    safetensors file, which would be the error otherwise) and nothing is written."""
    from porting import convert
    bad = tmp_path / 'w.safetensors'
    bad.write_bytes(b'not a checkpoint')
    for args in (['--model', 'samvit_base_patch16', '--img-size', '40'],
                 ['--model', 'vit_tiny_r_s16_p8_224', '--img-size', '64x100'],
                 ['--model', 'vit_tiny_r_s16_p8_224', '--model-arg', 'img_size=40']):
        assert convert.main([*args, '--checkpoint', str(bad), '--out', str(tmp_path / 'out')]) == 1
        err = capsys.readouterr().err
        assert re.match(rf'error: {args[1]} at input size .*: img_size=', err) and err.count('\n') == 1, err
    assert not (tmp_path / 'out').exists()


def test_export_refuses_a_directory_at_a_size_timm_cannot_build(sam_dir, tmp_path):
    """A model directory at such a size (written before this check; here 32 px edited to 40, the same 2x2 map) is
    refused when read, naming its config.json, instead of timm's AssertionError after the export's work."""
    import shutil

    from porting import export
    d = tmp_path / 'm'
    shutil.copytree(sam_dir, d)
    cfg = json.loads((d / 'config.json').read_text())
    assert cfg['model']['img_size'] == 32
    cfg['model']['img_size'] = 40
    (d / 'config.json').write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r'config\.json: .*img_size=40: must be a multiple of patch_size=16'):
        export.export(d, tmp_path / 'out.safetensors')
    assert not (tmp_path / 'out.safetensors').exists()


def test_train_refuses_a_head_that_pools_nothing_before_writing(tmp_path):
    """global_pool='' gives timm's logits per token: train.py's loss needs one row per image, so a model built or
    stored that way is refused by `validate` (before a workdir exists) with the way out for each route."""
    import vitjax
    from vitjax.train.config import default_config, validate
    c = default_config()
    c.model, c.model_overrides = 'vit_tiny_patch16_224', {'img_size': 32, 'depth': 1, 'global_pool': ''}
    with pytest.raises(ValueError, match=r"global_pool='', which pools nothing.*set model_overrides.global_pool"):
        validate(c)
    vitjax.save(tmp_path / 'tokens', *vitjax.create_model('vit_tiny_patch16_224', img_size=32, depth=1,
                                                          global_pool=''))
    c = default_config()
    c.init = str(tmp_path / 'tokens')
    with pytest.raises(ValueError, match=r"global_pool=''.*vitjax.load\('.*tokens', global_pool='avg'\)"):
        validate(c)


@pytest.mark.parametrize('name, kwargs, size', [
    ('qwen3_vit_88m_merge', dict(depth=1, embed_dim=64, num_heads=2), 48),
    ('qwen3_vit_88m_merge', dict(depth=1, embed_dim=64, num_heads=2), 64),
    ('qwen3_vit_88m', dict(depth=1, embed_dim=64, num_heads=2), 48),
    ('gemma4_vit_167m_enc', dict(depth=1, embed_dim=64, num_heads=2, head_dim=32, intermediate_size=64), 64),
    ('gemma4_vit_167m_enc', dict(depth=1, embed_dim=64, num_heads=2, head_dim=32, intermediate_size=64), 96),
])
def test_a_towers_nominal_size_is_one_its_projector_takes(name, kwargs, size):
    """The towers take any whole-patch size per call, and their projector a multiple of its k x k patches: a
    nominal img_size the projector refuses at its first call is refused when the model is built (train.py's
    validation too), and only such a size."""
    import jax
    import vitjax
    from vitjax import registry
    from vitjax.models.family import problems
    model = registry.build_model(name, **kwargs)
    found = problems(model.clone(img_size=size))
    try:
        jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, size, size, 3), 'float32'))
        runs = True
    except ValueError:
        runs = False
    assert (not found) == runs, found
    if found:
        with pytest.raises(ValueError, match='img_size'):
            vitjax.create_model(name, img_size=size, **kwargs)
