"""Swin Transformer: parity with timm's SwinTransformer (logits, features, stage maps), other image and window
sizes with timm's relative-position-bias resize, strict tables, the CLI and export round trip."""
import json

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vitjax
from conftest import images, jit_apply, max_diff, port, run_timm, timm_model
from porting import convert, export, random_init, timm_swin
from porting import sources
from vitjax.weights.engine import ConversionError
from vitjax.models.swin import resize_rel_pos_bias_table

TIMM_SWIN = sources.get('timm', 'swin')

# Real widths and heads, fewer blocks per stage (two: one plain, one shifted window block).
SHORT = dict(depths=(2, 2, 2, 2))
# Where a test is about sizes and windows, not width: a third of tiny's, its 32-wide heads.
NARROW = dict(embed_dim=32, num_heads=(1, 2, 4, 8))


def _rel(a, b):
    return max_diff(a, b) / max(1.0, float(np.abs(np.asarray(b)).max()))


@pytest.fixture(scope='module')
def tiny():
    tm = timm_model('swin_tiny_patch4_window7_224', seed=3, **SHORT)
    return tm, *port(tm)


def test_logits_features_and_pre_logits(tiny):
    tm, model, variables = tiny
    x = images(model)
    # Logits and features in one jitted program: one compile, and XLA computes the shared trunk once.
    logits, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.forward_features)))(
        variables, x)
    assert _rel(logits, run_timm(tm, x)) < 1e-5
    ref = run_timm(tm, x, lambda m, t: m.forward_features(t))
    assert feats.shape == (2, 7, 7, 768) and _rel(feats, ref) < 1e-5
    pre = jit_apply(model, pre_logits=True, method=model.forward_head)(variables, feats)
    assert _rel(pre, run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True))) < 1e-5


INTERMEDIATES = [dict(), dict(indices=2, norm=True), dict(indices=[0, 2], stop_early=True)]


@pytest.fixture(scope='module')
def tiny_intermediates(tiny):
    """Per case: forward_intermediates(**kw) and its NHWC intermediates_only twin, all cases in one jitted program:
    one compile, and XLA computes the trunk they share once (a program per case compiled it per case)."""
    _, model, variables = tiny
    x = images(model, batch=1)
    no_stop = lambda kw: {k: v for k, v in kw.items() if k != 'stop_early'}
    run = jax.jit(lambda v, x: [(model.apply(v, x, method=model.forward_intermediates, **kw),
                                 model.apply(v, x, method=model.forward_intermediates, output_fmt='NHWC',
                                             intermediates_only=True, **no_stop(kw)))
                                for kw in INTERMEDIATES])
    return x, run(variables, x)


@pytest.mark.slow
@pytest.mark.parametrize('kw', INTERMEDIATES)
def test_forward_intermediates(tiny, tiny_intermediates, kw):
    tm = tiny[0]
    x, outs = tiny_intermediates
    (final, maps), nhwc = outs[INTERMEDIATES.index(kw)]
    t_final, t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, **kw))
    assert len(maps) == len(t_maps)
    for a, b in zip(maps, t_maps):
        assert a.shape == tuple(b.shape) and _rel(a, b) < 1e-5
    assert final.shape == tuple(t_final.shape) and _rel(final, t_final) < 1e-5
    assert [m.shape for m in nhwc] == [tuple(m.permute(0, 2, 3, 1).shape) for m in t_maps]


@pytest.mark.slow
def test_swin_b_at_512_feature_maps():
    """The tutorial's Swin-B at img_size=512: stage maps 128²x128, 64²x256, 32²x512, 16²x1024 (window 7 pads)."""
    tm = timm_model('swin_base_patch4_window7_224', seed=4, img_size=512, **SHORT)
    model, variables = port(tm)
    assert model.img_size == 512
    x = images(model, batch=1)
    # Maps and logits in one jitted program: one compile, and XLA computes the shared trunk once.
    maps, logits = jax.jit(lambda v, x: (model.apply(v, x, method=model.forward_intermediates, intermediates_only=True),
                                         model.apply(v, x)))(variables, x)
    assert [m.shape for m in maps] == [(1, 128, 128, 128), (1, 256, 64, 64), (1, 512, 32, 32), (1, 1024, 16, 16)]
    t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, intermediates_only=True))
    assert max(_rel(a, b) for a, b in zip(maps, t_maps)) < 1e-5
    assert _rel(logits, run_timm(tm, x)) < 1e-5


@pytest.mark.slow
def test_dynamic_img_size_odd_input():
    tm = timm_model('swin_tiny_patch4_window7_224', seed=5, dynamic_img_size=True, depths=(2, 2, 2, 2))
    model, variables = port(tm)
    assert model.dynamic_img_size
    apply = jax.jit(model.apply)  # traced and compiled once per input size
    for size in ((196, 228), (100, 60)):
        x = images(model, batch=1, size=size)
        assert _rel(apply(variables, x), run_timm(tm, x)) < 1e-5


@pytest.mark.parametrize('old, new', [((7, 7), (12, 12)), ((12, 12), (7, 7)), ((7, 7), (16, 16)),
                                      ((7, 7), (8, 12)), ((6, 10), (9, 5))])
def test_rel_pos_bias_resize_matches_timm(old, new):
    from timm.layers import resize_rel_pos_bias_table as timm_resize
    table = np.random.default_rng(0).standard_normal(((2 * old[0] - 1) * (2 * old[1] - 1), 4)).astype(np.float32)
    shape = ((2 * new[0] - 1) * (2 * new[1] - 1), 4)
    ref = timm_resize(torch.from_numpy(table), new_window_size=new, new_bias_shape=shape, old_window_size=old)
    ours = resize_rel_pos_bias_table(table, new, old)
    assert ours.shape == shape and max_diff(ours, ref) < 1e-5


def test_strict_table_errors(tiny):
    tm, model, _ = tiny
    cfg = timm_swin.torch_config(tm)
    sd = dict(tm.state_dict())
    sd['layers.1.blocks.0.attn.extra'] = sd.pop('layers.1.blocks.0.attn.proj.bias')
    with pytest.raises(ConversionError) as e:
        TIMM_SWIN.from_state(sd, cfg)
    assert 'layers.1.blocks.0.attn.extra' in str(e.value) and 'layers_1/blocks_0/attn/proj/bias' in str(e.value)
    with pytest.raises(ConversionError, match='wrong shape'):
        TIMM_SWIN.from_state(tm.state_dict(), {**cfg, 'window_size': 8})


@pytest.mark.slow
def test_cli_new_size_window_and_head_then_export(tmp_path):
    """--img-size/--window-size/--num-classes against timm's own adaptation (checkpoint_filter_fn), then the
    adapted model goes back to timm through export; the unchanged model round-trips bit-exactly (NARROW)."""
    name = 'swin_tiny_patch4_window7_224'
    tm = random_init.create(name, seed=6, **SHORT, **NARROW)
    ckpt = random_init.save(tm, tmp_path / 'swin.safetensors')
    args = ['--model', name, '--checkpoint', str(ckpt), '--model-arg', 'depths=(2,2,2,2)', '--model-arg',
            'embed_dim=32', '--model-arg', 'num_heads=(1,2,4,8)']
    assert convert.main(args + ['--out', str(tmp_path / 'same')]) == 0
    assert convert.main(args + ['--out', str(tmp_path / 'big'), '--img-size', '384', '--window-size', '12',
                                '--num-classes', '5']) == 0
    report = json.loads((tmp_path / 'big' / 'parity.json').read_text())
    assert report['passed'] and report['pre_logits']['max_abs_diff'] < 1e-4
    model, variables = vitjax.load(tmp_path / 'big')
    assert (model.img_size, model.window_size, model.num_classes) == (384, 12, 5)
    assert variables['params']['layers_0']['blocks_0']['attn']['relative_position_bias_table'].shape == (529, 1)

    assert export.main(['--model', str(tmp_path / 'same'), '--out', str(tmp_path / 'back.safetensors')]) == 0
    back, orig = load_file(str(tmp_path / 'back.safetensors')), load_file(str(ckpt))
    params = {k: v for k, v in orig.items() if not k.endswith(('relative_position_index', 'attn_mask'))}
    assert back.keys() == params.keys() and all(torch.equal(back[k], params[k]) for k in params)
    assert export.main(['--model', str(tmp_path / 'big'), '--out', str(tmp_path / 'big.safetensors')]) == 0


@pytest.mark.slow
def test_create_model_load_and_resize(tmp_path):
    model, variables = vitjax.create_model('swin_tiny_patch4_window7_224', num_classes=3, depths=(1, 1, 2, 1))
    x = images(model, batch=1)
    assert jax.jit(model.apply)(variables, x).shape == (1, 3)
    vitjax.save(tmp_path / 'm', model, variables, name='swin_tiny_patch4_window7_224')
    again, v2 = vitjax.load(tmp_path / 'm', img_size=256, window_size=8)
    table = v2['params']['layers_0']['blocks_0']['attn']['relative_position_bias_table']
    assert (again.img_size, table.shape) == (256, (225, 3))
    assert jax.jit(again.apply)(v2, images(again, batch=1)).shape == (1, 3)


@pytest.mark.slow
def test_stochastic_depth_and_dropout_only_in_training():
    # One block a stage (drop-path rates 0 to 0.5 over four), NARROW: train vs eval is what counts.
    model, variables = vitjax.create_model('swin_tiny_patch4_window7_224', depths=(1, 1, 1, 1), **NARROW,
                                           drop_path_rate=0.5, drop_rate=0.5, num_classes=4)
    x = images(model, batch=2)
    rngs = {'dropout': jax.random.PRNGKey(1)}
    # Give the zero-initialised head weights so the head dropout shows in the logits.
    variables = jax.jit(lambda v: jax.tree.map(lambda p: p + 0.05, v))(variables)
    # All three in one jitted program; an eval pass that used the rng would still differ from the one without.
    eval_a, eval_b, train = jax.jit(lambda v, x, rngs: (model.apply(v, x), model.apply(v, x, rngs=rngs),
                                                        model.apply(v, x, train=True, rngs=rngs)))(variables, x, rngs)
    assert np.array_equal(eval_a, eval_b) and not np.allclose(train, eval_a)


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.parametrize('name', ['swin_tiny_patch4_window7_224', 'swin_base_patch4_window12_384'])
def test_full_size_through_cli(tmp_path, name):
    ckpt = random_init.save(random_init.create(name, seed=7), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), '--out', str(tmp_path / 'out')]) == 0
    report = json.loads((tmp_path / 'out' / 'parity.json').read_text())
    assert report['passed'] and report['max_abs_diff'] < 1e-4
