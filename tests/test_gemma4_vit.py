"""Gemma 4's vision tower (timm's gemma4_vit) against timm itself with perturbed random weights (clamp bounds
that cut, a standardization away from identity): the clamped 167M encoder and the standardizing 570M classifier
through the converter CLI and back bit for bit (every architecture converts in tests/hub_zoo.py), the forward API
on non-square images (soft tokens, the map, intermediates, attention weights, grouped key/value heads), the
position table's and the soft pool's limits, the full-size 167M tower, and fine-tuning the classifier through
train.py. Reduced depth and width except the full-size test.

Random weights get q / k norm scales x head_dim^-1/4 (porting.random_init): the tower attends at scale 1 on
normed q and k, and with scales near 1 its softmax is so sharp that float32 rounding grows 1.5x a block, timm's
own against float64 too (at full size 0.14 of max 311 at the output; with the scaled norms 3e-4 of 558)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, max_diff, port, run_timm,
                      timm_model, tower_attention_matches_timm)

NAMES = ['gemma4_vit_167m', 'gemma4_vit_167m_enc', 'gemma4_vit_570m', 'gemma4_vit_570m_enc']
SMALL = dict(depth=2, embed_dim=128, num_heads=4, head_dim=32, intermediate_size=256, position_embedding_size=64)


def tol(ref):
    return 1e-5 * max(1, float(np.abs(ref).max()))


def pixels(shape, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, shape).astype(np.float32)  # the tower's input: [0, 1]


def test_every_pretrained_gemma4_tower_and_tag_is_in_the_zoo():
    """All 4 tags; the 167M clamps its projections, the 570M standardizes its soft tokens (as timm's names)."""
    import timm
    z = json.load(open('vitjax/zoo.json'))
    tags = sorted(timm.list_models(module='gemma4_vit', pretrained=True))
    assert len(tags) == 4 and sorted({t.split('.')[0] for t in tags}) == NAMES
    assert all(t in z['tags'] and z['tags'][t]['mean'] == [0.] * 3 and z['tags'][t]['std'] == [1.] * 3 for t in tags)
    arch = z['architectures']
    assert {n: arch[n]['family'] for n in NAMES} == {
        'gemma4_vit_167m': 'gemma4_vit', 'gemma4_vit_167m_enc': 'gemma4_vit_enc',
        'gemma4_vit_570m': 'gemma4_vit', 'gemma4_vit_570m_enc': 'gemma4_vit_enc'}
    assert {n: (arch[n]['config']['use_clipped_linears'], arch[n]['config']['standardize']) for n in NAMES} == {
        'gemma4_vit_167m': (True, False), 'gemma4_vit_167m_enc': (True, False),
        'gemma4_vit_570m': (False, True), 'gemma4_vit_570m_enc': (False, True)}


def test_unbounded_clamps_are_kept_as_float_max_and_exported_as_inf():
    from vitjax.weights.timm_gemma4_vit import BOUND
    x = np.array([-np.inf, np.inf, -1.5, 2.], np.float32)
    (y,), back = BOUND.forward(x, {}), BOUND.inverse(BOUND.forward(x, {}), {})
    assert np.isfinite(y).all() and y[0] == -np.finfo(np.float32).max and back.dtype == x.dtype
    assert np.array_equal(back, x)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['gemma4_vit_167m_enc', 'gemma4_vit_570m'])
def test_gemma4_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5, at a 144 px nominal size) -> load -> export -> the same tensors, bit for bit."""
    family = 'gemma4_vit_enc' if name.endswith('_enc') else 'gemma4_vit'
    saved, model, variables = convert_and_export(tmp_path, name, family, SMALL, 1e-5, ['--img-size', '144'])
    p = variables['params'] if family == 'gemma4_vit_enc' else variables['params']['encoder']
    clipped = name.startswith('gemma4_vit_167m')
    assert ('input_min' in p['blocks_0']['attn']['q_proj']) == clipped and ('std_bias' in p) == (not clipped)
    assert saved['img_size'] == 144 and p['position_embedding_table'].shape == (2, 64, 128)


@pytest.fixture(scope='module')
def towers():
    """The 570M encoder with the 167M's clamps too (timm takes both), and the 167M classifier over the soft
    tokens with grouped key/value heads (4 query heads on 2); a non-square 144x96 input: a 9x6 patch grid, 3x2
    soft tokens."""
    enc = timm_model('gemma4_vit_570m_enc', seed=1, use_clipped_linears=True, **SMALL)
    cls = timm_model('gemma4_vit_167m', seed=2, num_classes=7, encoder_pool='soft', num_kv_heads=2, **SMALL)
    return (enc, *port(enc)), (cls, *port(cls)), pixels((2, 144, 96, 3))


@pytest.mark.slow
def test_encoder_soft_tokens_map_and_intermediates_match_timm(towers):
    (tm, model, variables), _, x = towers
    tokens, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.forward_features)))(
        variables, x)
    ref = run_timm(tm, x).numpy()
    assert tokens.shape == ref.shape == (2, 3 * 2, 128) and max_diff(tokens, ref) < tol(ref)
    assert model.feature_grid(144, 96) == (3, 2) and model.standardize and model.use_clipped_linears
    t_feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()  # timm's (B, N, D)
    assert feats.shape == (2, 9, 6, 128) and max_diff(feats.reshape(t_feats.shape), t_feats) < tol(t_feats)
    pre = run_timm(tm, x, lambda m, t: m.pooler(m.forward_features(t), m.patch_embed(t)[1], None)[0]).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)
    for fmt in ('NCHW', 'NLC'):
        t_final, t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, output_fmt=fmt))
        final, maps = model.apply(variables, x, output_fmt=fmt, method=model.forward_intermediates)
        assert [m.shape for m in maps] == [tuple(m.shape) for m in t_maps]
        assert all(max_diff(a, b.numpy()) < tol(b.numpy()) for a, b in zip(maps, t_maps))
        assert max_diff(final.reshape(t_final.shape), t_final.numpy()) < tol(t_final.numpy())


@pytest.mark.slow
def test_classifier_over_soft_tokens_with_grouped_heads_matches_timm(towers):
    _, (tm, model, variables), x = towers
    assert model.num_kv_heads == 2 and model.encoder_pool == 'soft'
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    feats = jax.jit(lambda v, x: model.apply(v, x, method=model.forward_features))(variables, x)
    assert feats.shape == (2, 6, 128)
    pre = run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)
    t_final, _ = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, indices=1, output_fmt='NLC'))
    final, _ = model.apply(variables, x, indices=1, output_fmt='NLC', method=model.forward_intermediates)
    assert max_diff(final.reshape(t_final.shape), t_final.numpy()) < tol(t_final.numpy())  # the trunk's, unpooled


@pytest.mark.slow
def test_attention_weights_match_timm(towers):
    (tm, model, variables), _, x = towers
    tower_attention_matches_timm(tm, model, variables, x, (9, 6))


@pytest.mark.slow
def test_input_limits_are_named_as_timm(towers):
    """The soft pool takes whole 3x3 cells (timm refuses the same size); the position table has 64 rows here,
    so a 65-patch side is refused; without the pool any whole-patch size goes."""
    (tm, model, variables), _, _ = towers
    x = pixels((1, 160, 96, 3))  # 10 x 6 patches
    with pytest.raises(ValueError, match=r'must be divisible'):
        run_timm(tm, x)
    with pytest.raises(ValueError, match=r'input size \(160, 96\): the soft-token pool takes 3x3 patches'):
        model.apply(variables, x)
    plain = model.clone(global_pool='')
    assert plain.apply(variables, x).shape == (1, 10, 6, 128)
    with pytest.raises(ValueError, match=r'patch grid \(65, 1\): the position table has 64 rows'):
        plain.apply(variables, pixels((1, 65 * 16, 16, 3)))


def test_clamps_at_their_init_change_nothing_and_are_never_trained():
    """An unbounded ClippableLinear is its Dense; training leaves every buffer (clamps, standardization) as it was."""
    import optax
    from vitjax.train import optim
    from vitjax.train.config import default_config
    from vitjax.models.gemma4_vit import ClippableLinear, Gemma4VitEncoder
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 5, 8)) * 1e30, jnp.float32)
    layer = ClippableLinear(4, clip=True)
    v = layer.init(jax.random.PRNGKey(0), x)
    assert np.allclose(layer.apply(v, x), x @ v['params']['linear']['kernel'], rtol=1e-6)
    model = Gemma4VitEncoder(img_size=48, embed_dim=32, depth=1, num_heads=2, head_dim=16, intermediate_size=64,
                             position_embedding_size=8, standardize=True, use_clipped_linears=True)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))['params']
    params = jax.tree.map(lambda s: np.full(s.shape, 0.5, np.float32), shapes)
    c = default_config()
    c.warmup_steps = 0
    tx = optim.create_optimizer(c, params, 10)
    step = lambda p: optax.apply_updates(p, tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)[0])
    new = jax.jit(step)(params)
    flat, moved = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (params, new))
    names = lambda path: '/'.join(k.key for k in path)
    buffers = {names(p) for (p, a), (_, b) in zip(flat, moved) if np.array_equal(a, b)}
    assert buffers == {names(p) for p, _ in flat if names(p).endswith(('_min', '_max', 'std_bias', 'std_scale'))}
    assert len(buffers) == 7 * 4 + 2


def test_bad_gemma4_configs_are_named():
    from vitjax.models.gemma4_vit import Gemma4VitClassifier, Gemma4VitEncoder
    base = dict(img_size=48, embed_dim=64, depth=1, num_heads=4, head_dim=16, intermediate_size=128,
                position_embedding_size=8)
    for cls, kwargs, msg in [(Gemma4VitEncoder, dict(num_classes=3), 'num_classes=3: the encoder has no head'),
                             (Gemma4VitEncoder, dict(global_pool='merge'), "global_pool='merge'"),
                             (Gemma4VitClassifier, dict(global_pool='soft'), "global_pool='soft'"),
                             (Gemma4VitClassifier, dict(encoder_pool='avg'), "encoder_pool='avg'"),
                             (Gemma4VitEncoder, dict(head_dim=18), 'head_dim=18: head_dim a multiple of 4'),
                             (Gemma4VitEncoder, dict(num_kv_heads=3), 'num_kv_heads=3: must divide num_heads=4'),
                             (Gemma4VitEncoder, dict(pooling_kernel_size=0), 'pooling_kernel_size=0'),
                             (Gemma4VitEncoder, dict(position_embedding_size=0), 'position_embedding_size=0')]:
        with pytest.raises(ValueError, match=msg):
            cls(**{**base, **kwargs}).init(jax.random.PRNGKey(0), jnp.zeros((1, 48, 48, 3)))


@pytest.mark.zoo
@pytest.mark.slow
def test_gemma4_full_size(tmp_path):
    """The clamped 167M tower whole (16 blocks x 768, the 10240-row position table) through convert, at timm's
    smallest input (96 px: 6x6 patches, 2x2 soft tokens; the weights do not depend on the size)."""
    model = full_size_matches_registry(tmp_path, 'gemma4_vit_167m_enc', 1e-5, img_size=96)
    assert model.depth == 16 and model.use_clipped_linears and model.feature_grid(96, 96) == (2, 2)


@pytest.mark.slow
def test_train_py_fine_tunes_gemma4_classifier(tmp_path):
    """`--config.init` a converted, narrowed Gemma 4 classifier (its clamps cutting), trained on the digits at
    28 px (a 2x2 grid of 14 px patches), then `vitjax features` / `attention` and export back."""
    fine_tune_family(tmp_path, 'gemma4_vit_167m', dict(depth=2, embed_dim=192, num_heads=3, head_dim=64,
                                                       intermediate_size=384, position_embedding_size=16,
                                                       patch_size=14), 28, convert_args=['--img-size', '28'])
