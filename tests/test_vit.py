"""The Flax VisionTransformer against timm's, option by option (small random-perturbed models)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from timm.layers import LayerNorm

from conftest import images, jit_apply, max_diff, port, run_timm, timm_model
from vitjax.models import VisionTransformer

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)

OPTIONS = {
    'plain': {},
    'avg_fc_norm': dict(global_pool='avg'),
    'avg_no_fc_norm': dict(global_pool='avg', fc_norm=False),
    'avgmax': dict(global_pool='avgmax'),
    'max_no_class_token': dict(global_pool='max', class_token=False),
    'no_pool_per_token_head': dict(global_pool=''),
    'headless': dict(num_classes=0),
    'no_qkv_bias': dict(qkv_bias=False),
    'qk_norm': dict(qk_norm=True),
    'layer_scale': dict(init_values=1e-5),
    'registers_no_embed_class': dict(reg_tokens=4, no_embed_class=True, init_values=1e-5),
    'pre_norm_quick_gelu_eps': dict(pre_norm=True, act_layer='quick_gelu', norm_layer=functools.partial(
        LayerNorm, eps=1e-5)),
    'no_final_norm': dict(final_norm=False),
    'map_head': dict(global_pool='map', class_token=False),
    'mlp_ratio_non_square': dict(mlp_ratio=2.5, img_size=(32, 48)),
}


@pytest.mark.parametrize('option', list(OPTIONS))
def test_option_parity(option):
    tm = timm_model('vit_tiny_patch16_224', **{**SMALL, **OPTIONS[option]})
    model, variables = port(tm)
    x = images(model)
    feats = model.apply(variables, x, method=model.forward_features)
    assert max_diff(feats, run_timm(tm, x, lambda m, t: m.forward_features(t))) < 1e-5
    logits = model.apply(variables, x)
    ref = run_timm(tm, x, lambda m, t: m(t))
    assert max_diff(logits, ref) < 1e-5 * max(1, np.abs(ref.numpy()).max())
    pre = model.apply(variables, feats, pre_logits=True, method=model.forward_head)
    assert max_diff(pre, run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True))) < 1e-5


def test_distilled_head_is_mean_of_both_heads():
    tm = timm_model('deit_tiny_distilled_patch16_224', **SMALL)
    model, variables = port(tm)
    x = images(model)
    logits = model.apply(variables, x)
    assert max_diff(logits, run_timm(tm, x)) < 1e-5
    feats = np.asarray(model.apply(variables, x, method=model.forward_features))
    p = variables['params']
    own = (feats[:, 0] @ p['head']['kernel'] + p['head']['bias']
           + feats[:, 1] @ p['head_dist']['kernel'] + p['head_dist']['bias']) / 2
    assert max_diff(logits, own) < 1e-5
    # The two heads really differ, so the mean is not one head read twice.
    assert max_diff(feats[:, 0] @ p['head']['kernel'], feats[:, 1] @ p['head_dist']['kernel']) > 1e-2


def test_headless_model_returns_pooled_features():
    tm = timm_model('vit_base_patch16_224.mae', **{**SMALL, 'num_classes': 0})
    model, variables = port(tm)
    assert model.num_classes == 0 and 'head' not in variables['params']
    out = model.apply(variables, images(model))
    assert out.shape == (2, 64)
    assert max_diff(out, run_timm(tm, images(model))) < 1e-5


@pytest.mark.parametrize('kwargs', [dict(indices=None, output_fmt='NCHW'), dict(indices=1, output_fmt='NLC'),
                                    dict(indices=[0, -1], norm=True, output_fmt='NCHW'),
                                    dict(indices=[0], return_prefix_tokens=True, output_fmt='NLC')])
def test_forward_intermediates_match_timm(kwargs):
    tm = timm_model('deit_tiny_distilled_patch16_224', **SMALL)
    model, variables = port(tm)
    x = images(model)
    final, inter = model.apply(variables, x, method=model.forward_intermediates, **kwargs)
    ref_final, ref_inter = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, **kwargs))
    assert max_diff(final, ref_final) < 1e-5
    assert len(inter) == len(ref_inter) > 0
    for ours, ref in zip(inter, ref_inter):
        if kwargs.get('return_prefix_tokens'):
            assert max_diff(ours[1], ref[1]) < 1e-5
            ours, ref = ours[0], ref[0]
        assert max_diff(ours, ref) < 1e-5


def test_forward_intermediates_nhwc_and_only():
    model = VisionTransformer(**SMALL)
    variables = model.init(jax.random.PRNGKey(0), images(model))
    x = images(model)
    nchw = model.apply(variables, x, indices=2, intermediates_only=True, method=model.forward_intermediates)
    nhwc = model.apply(variables, x, indices=2, output_fmt='NHWC', intermediates_only=True,
                       method=model.forward_intermediates)
    assert [a.shape for a in nhwc] == [(2, 4, 4, 64)] * 2
    for a, b in zip(nchw, nhwc):
        np.testing.assert_array_equal(np.asarray(a).transpose(0, 2, 3, 1), b)
    with pytest.raises(ValueError, match='output_fmt'):
        model.apply(variables, x, output_fmt='NCL', method=model.forward_intermediates)


def test_dynamic_img_size_odd_input():
    tm = timm_model('vit_tiny_patch16_224', **{**SMALL, 'dynamic_img_size': True, 'reg_tokens': 2})
    model, variables = port(tm)
    x = images(model, size=(40, 24))
    assert max_diff(model.apply(variables, x), run_timm(tm, x)) < 1e-5


def test_wrong_input_size_is_a_clear_error():
    model = VisionTransformer(**SMALL)
    variables = model.init(jax.random.PRNGKey(0), images(model))
    with pytest.raises(ValueError, match=r'does not match img_size \(32, 32\)'):
        model.apply(variables, images(model, size=(40, 40)))
    with pytest.raises(ValueError, match='NHWC'):
        model.apply(variables, np.zeros((1, 3, 32, 32), np.float32))


@pytest.mark.slow
def test_dropout_and_drop_path_only_in_train():
    model = VisionTransformer(**SMALL, drop_rate=0.3, proj_drop_rate=0.2, attn_drop_rate=0.2, drop_path_rate=0.5)
    x = images(model, batch=4)
    # Jitted throughout: eager init/apply compile every op on its own. The rng key is an argument, so the
    # train pass compiles once for all keys. numpy noise: a jax.random.normal per param shape took ~4 s to compile.
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    noise = np.random.default_rng(1)
    variables = jax.tree.map(lambda p: p + 0.05 * noise.standard_normal(p.shape).astype(np.float32), variables)
    eval_a, eval_b = jit_apply(model)(variables, x), jit_apply(model, train=False)(variables, x)
    np.testing.assert_array_equal(eval_a, eval_b)
    train_apply = jax.jit(lambda v, x, key: model.apply(v, x, train=True, rngs={'dropout': key}))
    train = lambda k: train_apply(variables, x, jax.random.PRNGKey(k))
    assert max_diff(train(0), eval_a) > 1e-3 and max_diff(train(0), train(1)) > 1e-3
    np.testing.assert_array_equal(train(2), train(2))


@pytest.mark.slow
def test_drop_path_drops_whole_samples():
    from vitjax.models.cfgs import AttnCfg, MlpCfg
    from vitjax.models.layers import Block
    blk = Block(AttnCfg(num_heads=2), MlpCfg(mlp_ratio=2.), drop_path=0.5)
    x = jnp.asarray(images(VisionTransformer(**SMALL), batch=64)[:, :5, :5, :].reshape(64, 25, 3).repeat(6, -1)[
        ..., :16])
    v = blk.init(jax.random.PRNGKey(0), x)
    y = blk.apply(v, x, train=True, rngs={'dropout': jax.random.PRNGKey(3)})
    kept_identity = np.all(np.isclose(np.asarray(y), np.asarray(x)), axis=(1, 2))
    # Samples whose both branches were dropped come out unchanged; with p=0.5 per branch, about a quarter.
    assert 4 <= kept_identity.sum() <= 32


def test_bad_options_are_rejected():
    x = images(VisionTransformer(**SMALL))
    for bad, match in [(dict(global_pool='mean'), 'global_pool'), (dict(class_token=False), 'class token'),
                       (dict(pos_embed='sincos'), 'pos_embed')]:
        with pytest.raises(ValueError, match=match):
            VisionTransformer(**{**SMALL, **bad}).init(jax.random.PRNGKey(0), x)


@pytest.mark.slow
@pytest.mark.parametrize('arch', ['vit', 'swin'])
def test_grad_checkpointing_same_params_and_gradients(arch):
    # remat changes when activations are computed, not what: same param tree, same loss and gradients,
    # and the backward really recomputes (a remat/checkpoint in the jaxpr).
    from vitjax.models import SwinTransformer
    cls, kw = (VisionTransformer, dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                                       num_classes=5, init_values=0.3)) if arch == 'vit' else (
        SwinTransformer, dict(img_size=32, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 4),
                              window_size=4, num_classes=5))
    plain, remat = cls(**kw), cls(**kw, grad_checkpointing=True)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    # Jitted init and numpy noise: eager init and an eager jax.random.normal compile op by op, shape by shape.
    v = jax.jit(plain.init)(jax.random.PRNGKey(0), x)
    noise = np.random.default_rng(1)
    v = jax.tree_util.tree_map(lambda p: p + 0.02 * noise.standard_normal(p.shape).astype(np.float32), v)
    assert jax.tree_util.tree_structure(jax.eval_shape(remat.init, jax.random.PRNGKey(0), x)) == \
        jax.tree_util.tree_structure(v)

    def loss(m):
        return lambda p: jnp.sum(m.apply({'params': p}, x, train=True) ** 2)
    (l0, g0), (l1, g1) = (jax.jit(jax.value_and_grad(loss(m)))(v['params']) for m in (plain, remat))
    assert abs(float(l0) - float(l1)) <= 1e-5 * abs(float(l0)) and float(l0) > 0
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(g1)):
        assert max_diff(a, b) <= 1e-5
    jaxpr = lambda m: str(jax.make_jaxpr(jax.grad(loss(m)))(v['params']))
    assert 'remat' in jaxpr(remat) or 'checkpoint' in jaxpr(remat)
    assert not ('remat' in jaxpr(plain) or 'checkpoint' in jaxpr(plain))


@pytest.mark.slow
def test_scan_blocks_matches_timm_and_the_unrolled_model():
    # Same weights, stacked: logits equal timm's, every block output and every gradient equal the unrolled model's.
    from vitjax.models.vit import stack_blocks, unstack_blocks
    tm = timm_model('vit_tiny_patch16_224', **{**SMALL, 'depth': 3, 'init_values': 0.3, 'qk_norm': True})
    model, variables = port(tm)
    scan = model.clone(scan_blocks=True)
    stacked = {'params': stack_blocks(variables['params'], 3)}
    x = images(model)
    # Jitted throughout (eager apply/grad compile every op on its own); the tree structure needs only shapes.
    assert jax.tree.structure(jax.eval_shape(scan.init, jax.random.PRNGKey(0), x)) == jax.tree.structure(stacked)
    ref = run_timm(tm, x, lambda m, t: m(t))
    assert max_diff(jit_apply(scan)(stacked, x), ref) < 1e-5 * max(1, np.abs(ref.numpy()).max())
    kws = (dict(indices=[0, 2], norm=True), dict(indices=[1], stop_early=True))
    # Both cases in one program per model: one compile, and XLA computes the blocks they share once.
    inter = lambda m: jax.jit(lambda v, x: [m.apply(v, x, output_fmt='NLC', method='forward_intermediates', **kw)
                                            for kw in kws])
    for a, b in zip(inter(model)(variables, x), inter(scan)(stacked, x)):
        for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert max_diff(p, q) < 1e-5
    loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x, train=True) ** 2)
    g0, g1 = jax.jit(jax.grad(loss(model)))(variables['params']), jax.jit(jax.grad(loss(scan)))(stacked['params'])
    g1 = unstack_blocks(g1)
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert max_diff(a, b) <= 1e-5 * max(1, float(jnp.abs(a).max()))
    back = unstack_blocks(stacked['params'])
    assert jax.tree.structure(back) == jax.tree.structure(variables['params'])
    assert all(np.array_equal(p, q) for p, q in zip(jax.tree.leaves(back), jax.tree.leaves(variables['params'])))


@pytest.mark.slow
def test_scan_blocks_drop_path_rates_per_block():
    # Rates 0, 0.5, 1 (linear over depth 3) arrive in the scan as data. Block 0 is never dropped, block 2 always:
    # a sample whose two block-1 branches were both dropped (p = 1/4) equals the 1-block model's eval output.
    # Rates in the wrong order or one rate for all would give no such sample or about 1 in 64.
    model = VisionTransformer(**{**SMALL, 'depth': 3}, drop_path_rate=1.0, scan_blocks=True)
    x = images(model, batch=64)
    # Jitted throughout, numpy noise: eager init / apply and eager jax.random.normal compile op by op.
    v = jax.jit(model.init)(jax.random.PRNGKey(0), x)
    noise = np.random.default_rng(1)
    v = jax.tree.map(lambda p: p + 0.05 * noise.standard_normal(p.shape).astype(np.float32), v)
    one = model.clone(depth=1, drop_path_rate=0.)
    first = {'params': {**v['params'], 'blocks': jax.tree.map(lambda p: p[:1], v['params']['blocks'])}}
    train, ref, evaluated = jax.jit(lambda v, first, x, key: (
        model.apply(v, x, train=True, rngs={'dropout': key}, method=model.forward_features),
        one.apply(first, x, method=one.forward_features), model.apply(v, x, method=model.forward_features)))(
        v, first, x, jax.random.PRNGKey(3))
    same = np.all(np.isclose(np.asarray(train), np.asarray(ref), atol=1e-5), axis=(1, 2))
    assert 6 <= same.sum() <= 28
    assert max_diff(evaluated, ref) > 1e-3  # eval: nothing dropped


@pytest.mark.slow
def test_scan_blocks_with_grad_checkpointing():
    kw = dict(SMALL, depth=3)
    x = images(VisionTransformer(**kw))
    a, b = (VisionTransformer(**kw, scan_blocks=True, grad_checkpointing=remat) for remat in (False, True))
    # Jitted throughout, numpy noise: eager init / grad and eager jax.random.normal compile op by op.
    v = jax.jit(a.init)(jax.random.PRNGKey(0), x)
    noise = np.random.default_rng(1)
    v = jax.tree.map(lambda p: p + 0.02 * noise.standard_normal(p.shape).astype(np.float32), v)
    loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x, train=True) ** 2)
    ga, gb = (jax.jit(jax.grad(loss(m)))(v['params']) for m in (a, b))
    for p, q in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        assert max_diff(p, q) <= 1e-5
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(b)))(v['params']))
    assert 'checkpoint' in jaxpr or 'remat' in jaxpr
