"""SAM's image encoder (timm's vision_transformer_sam) against timm itself with perturbed random weights: every
pretrained architecture through the converter CLI and back bit for bit, the forward API and attention maps,
another input size as timm resamples at run time, and fine-tuning through train.py. Reduced depth (one window
block, one global block) at a reduced size where the test is not about 1024 px, and a quarter of base's width
(its 64-wide heads) where it is not about width (samvit_base_patch16_224 runs at its own)."""
import json

import jax
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, images, max_diff, port,
                      run_timm, timm_attention_weights, timm_model)

NAMES = ['samvit_base_patch16', 'samvit_large_patch16', 'samvit_huge_patch16']
# a 24x24 map: 14x14 windows with padding; a quarter of the width, 64-wide heads as at full size
SMALL = dict(depth=2, global_attn_indexes=[1], img_size=384, embed_dim=192, num_heads=3)


def tol(ref):
    return 1e-5 * max(1, float(np.abs(ref).max()))


def test_every_pretrained_sam_is_in_the_zoo():
    import timm
    z = json.load(open('vitjax/zoo.json'))
    pretrained = sorted({n.split('.')[0] for n in timm.list_models(module='vision_transformer_sam', pretrained=True)})
    assert pretrained == sorted(NAMES)
    assert all(z['architectures'][n]['family'] == 'sam' and z['architectures'][n]['config']['img_size'] == 1024
               for n in NAMES)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['samvit_base_patch16'])
def test_sam_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit, at 1024 px (large and huge
    differ in width and depth only: tests/hub_zoo.py does them with two blocks). A quarter of the width (64-wide
    heads still): what is at stake at 1024 px is the 64x64 map, its windows and tables, not the width."""
    saved, model, variables = convert_and_export(tmp_path, name, 'sam', dict(depth=2, global_attn_indexes=[1],
                                                                             embed_dim=192, num_heads=3))
    assert saved['window_size'] == 14 and tuple(saved['global_attn_indexes']) == (1,)
    p = variables['params']
    assert p['pos_embed'].shape == (1, 64, 64, model.embed_dim)
    hd = model.embed_dim // model.num_heads
    assert p['blocks_0']['attn']['rel_pos']['rel_pos_h'].shape == (27, hd)  # the window's
    assert p['blocks_1']['attn']['rel_pos']['rel_pos_w'].shape == (127, hd)  # the whole map's


@pytest.fixture(scope='module')
def small():
    tm = timm_model('samvit_base_patch16', num_classes=7, init_values=0.3, **SMALL)  # LayerScale too
    model, variables = port(tm)
    return tm, model, variables, images(model)


def test_forward_api_matches_timm(small):
    """Logits, the neck's map, pre-logits and forward_intermediates (raw and through the neck) at 384 px, where
    the window blocks pad the 24x24 map to 28x28."""
    tm, model, variables, x = small

    def forward(v, x):  # one program: one compile, and XLA computes the trunk the outputs share once
        feats = model.apply(v, x, method=model.forward_features)
        return (model.apply(v, x), feats, model.apply(v, feats, pre_logits=True, method=model.forward_head),
                [model.apply(v, x, norm=norm, intermediates_only=True, method=model.forward_intermediates)
                 for norm in (False, True)])
    logits, mine, pre_ours, inter = jax.jit(forward)(variables, x)
    ref = run_timm(tm, x).numpy()
    assert max_diff(logits, ref) < tol(ref)
    feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert mine.shape == (2, 24, 24, 256) and max_diff(mine.transpose(0, 3, 1, 2), feats) < tol(feats)
    pre = run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(pre_ours, pre) < tol(pre)
    for norm, ours in zip((False, True), inter):
        maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, norm=norm, intermediates_only=True))
        assert len(ours) == 2 and ours[0].shape == (2, 256 if norm else model.embed_dim, 24, 24)
        assert all(max_diff(a, b.numpy()) < tol(b.numpy()) for a, b in zip(ours, maps))


def test_attention_maps_match_timm_and_cover_the_map(small):
    """The softmax weights of a window block and of a global block equal timm's; a window block's, laid on the
    map by grid_attention, equal a token-by-token reading of the windows."""
    tm, model, variables, x = small
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
    inter = state['intermediates']
    for i in (0, 1):
        ours = np.asarray(inter[f'blocks_{i}']['attn']['attn'][0])  # (B * windows, heads, n, n)
        ref = timm_attention_weights(tm, x, block=i)  # (B * windows * heads, n, n)
        assert max_diff(ours.reshape(ref.shape), ref) < 1e-5
    fused = np.asarray(inter['blocks_0']['attn']['attn'][0]).mean(axis=1)  # (B * 4, 196, 196)
    grid = np.asarray(model.grid_attention(fused, 0, 384, 384))
    assert grid.shape == (2, 576, 576)
    rng = np.random.default_rng(0)
    for _ in range(200):
        b, (q, k) = rng.integers(2), rng.integers(576, size=2)
        (qy, qx), (ky, kx) = divmod(q, 24), divmod(k, 24)
        same = (qy // 14, qx // 14) == (ky // 14, kx // 14)
        expect = fused[b * 4 + (qy // 14) * 2 + qx // 14, (qy % 14) * 14 + qx % 14, (ky % 14) * 14 + kx % 14]
        assert grid[b, q, k] == (expect if same else 0)


def test_neckless_sam_without_position_embedding():
    """timm's samvit_base_patch16_224 layout: no absolute positions, a LayerNorm2d in place of the conv neck."""
    tm = timm_model('samvit_base_patch16_224', depth=2, global_attn_indexes=[1], num_classes=3)
    model, variables = port(tm)
    assert model.neck_chans is None and not model.use_abs_pos and 'pos_embed' not in variables['params']
    x = images(model)
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)


@pytest.mark.slow
def test_sam_at_another_size_is_timms_run_time_resampling(tmp_path):
    """Converted at 384 px, loaded at 256: the position map and the global block's tables resampled, and the
    logits are what timm's 384-px model gives a 256-px input (it resamples both at run time); then
    `porting.convert --img-size` does the same with its own parity check."""
    import vitjax
    from porting import convert, random_init
    name = 'samvit_base_patch16'
    tm = random_init.create(name, seed=5, num_classes=4, **SMALL)
    src = random_init.save(tm, tmp_path / 'm.safetensors')
    args = [a for k, v in SMALL.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, '--out', str(tmp_path / 'out')]) == 0
    model, variables = vitjax.load(tmp_path / 'out', img_size=256)
    assert variables['params']['pos_embed'].shape[1:3] == (16, 16)
    assert variables['params']['blocks_1']['attn']['rel_pos']['rel_pos_h'].shape[0] == 31
    x = images(model)
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, '--img-size', '256',
                         '--out', str(tmp_path / 'out256'), '--tolerance', '1e-5']) == 0


@pytest.mark.zoo
@pytest.mark.slow
def test_sam_full_size(tmp_path):
    model = full_size_matches_registry(tmp_path, 'samvit_base_patch16', 1e-5)
    assert model.depth == 12 and tuple(model.global_attn_indexes) == (2, 5, 8, 11) and model.num_features == 256


def test_bad_sam_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.sam import VisionTransformerSAM as M
    for kwargs, msg in [(dict(global_attn_indexes=(-1,)), r'global_attn_indexes=\(-1,\)'),
                        (dict(window_size=-1), 'window_size=-1'), (dict(global_pool='token'), 'global_pool'),
                        (dict(neck_chans=0), 'neck_chans=0')]:
        with pytest.raises(ValueError, match=msg):
            M(depth=2, img_size=64, **kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_sam(tmp_path):
    """`--config.init` a converted SAM (one window block, one global): trained on the digits at 32x32 (its
    position map and tables resampled to a 2x2 map), then `vitjax features` / `attention` and export back. Windows
    of 4: the 2x2 map is still padded to a window, a 4x4 one rather than 14x14 (196 tokens, nearly all padding).
    A neck of half the channels, whose 3x3 convolution would be most of a step, and so an epoch more to learn in."""
    fine_tune_family(tmp_path, 'samvit_base_patch16', dict(depth=2, global_attn_indexes=[1], img_size=256,
                                                           window_size=4, neck_chans=128, embed_dim=192, num_heads=3),
                     32, epochs=5)
