"""vitjax.inference against timm: eval preprocessing, predictions, features, attention weights and rollout."""
import jax
import numpy as np
import pytest
import torch
from PIL import Image

import vitjax
from conftest import jit_apply, max_diff, port, run_timm, timm_model
from vitjax import inference


def _photo(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)  # smooth-ish, like a photo
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


def _timm_transform(tm):
    import timm.data
    return timm.data.create_transform(**timm.data.resolve_data_config(model=tm))


@pytest.fixture(scope='module')
def deit():
    tm = timm_model('deit_tiny_patch16_224', seed=2, depth=2)
    model, variables = port(tm)
    model = model.clone(pretrained_cfg=vitjax.PretrainedCfg.from_dict(
        {k: v for k, v in tm.pretrained_cfg.items() if k in ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode',
                                                            'interpolation')}))
    return tm, model, variables


@pytest.mark.parametrize('size', [(300, 200), (150, 400), (224, 224), (90, 60)])
def test_preprocess_equals_timm_eval_transform(deit, size):
    tm, model, _ = deit
    im = _photo(*size)
    ours = inference.preprocess([im], model)[0]
    ref = _timm_transform(tm)(im).numpy().transpose(1, 2, 0)
    assert ours.shape == (224, 224, 3) and max_diff(ours, ref) < 1e-5


def test_preprocess_crop_pct_one_and_inception_norm():
    tm = timm_model('vit_base_patch16_384', depth=1, embed_dim=192, num_heads=3)
    model, _ = port(tm)
    model = model.clone(pretrained_cfg=vitjax.registry.build_model('vit_base_patch16_384.augreg_in21k_ft_in1k')
                        .pretrained_cfg)
    tm.pretrained_cfg = dict(tm.pretrained_cfg, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    im = _photo(500, 420, seed=1)
    assert max_diff(inference.preprocess([im], model)[0], _timm_transform(tm)(im).numpy().transpose(1, 2, 0)) < 1e-5


def test_predict_matches_timm(deit, tmp_path):
    tm, model, variables = deit
    ims = [_photo(260, 300, seed=s) for s in range(3)]
    for i, im in enumerate(ims):
        im.save(tmp_path / f'{i}.jpg', quality=95)
    files = [str(tmp_path / f'{i}.jpg') for i in range(3)]
    preds = inference.predict(model, variables, files, top=5)
    with torch.no_grad():
        x = torch.stack([_timm_transform(tm)(Image.open(f).convert('RGB')) for f in files])
        probs = tm(x).softmax(-1).numpy()
    names = inference.imagenet_class_names(1000)
    for p, ref in zip(preds, probs):
        top = np.argsort(-ref)[:5]
        assert [r['index'] for r in p] == top.tolist()
        assert max_diff([r['probability'] for r in p], ref[top]) < 1e-5
        assert [r['label'] for r in p] == [names[i] for i in top]


def test_imagenet_class_names():
    names = inference.imagenet_class_names(1000)
    assert len(names) == 1000 and names[0].startswith('tench') and names[207].startswith('golden retriever')
    assert [len(inference.imagenet_class_names(n)) for n in (11821, 21841, 21843)] == [11821, 21841, 21843]
    assert inference.imagenet_class_names(10) is None


def test_features_of_every_kind_match_timm(deit):
    tm, model, variables = deit
    x = inference.preprocess([_photo(240, 240)], model)
    f = {k: inference.features(model, variables, x, k) for k in inference.FEATURE_KINDS}
    t_feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert max_diff(f['cls']['cls'], t_feats[:, 0]) < 1e-4
    assert max_diff(f['tokens']['tokens'], t_feats) < 1e-4
    assert f['map']['map'].shape == (1, 14, 14, 192)
    assert max_diff(f['map']['map'].reshape(1, 196, 192), t_feats[:, 1:]) < 1e-4
    assert max_diff(f['pooled']['pooled'], run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t),
                                                                                         pre_logits=True))) < 1e-4
    assert sorted(f['intermediates']) == ['block_0', 'block_1'] and f['intermediates']['block_1'].shape == (
        1, 14, 14, 192)


@pytest.mark.slow
def test_features_swin_and_registers():
    # Ported random timm weights: create_model's jitted Swin init compiles for ~7 s (create_model is tested in
    # test_swin). features() bakes the weights into its programs as constants, so they are the slow part here:
    # one block a stage and a third of tiny's width (its 32-wide heads), the stage maps and windows its own at 224 px.
    swin, sv = port(timm_model('swin_tiny_patch4_window7_224', depths=(1, 1, 1, 1), embed_dim=32,
                               num_heads=(1, 2, 4, 8)))
    x = np.zeros((1, 224, 224, 3), np.float32)
    assert inference.features(swin, sv, x, 'map')['map'].shape == (1, 7, 7, 256)
    stages = inference.features(swin, sv, x, 'intermediates')
    assert [stages[f'stage_{i}'].shape for i in range(4)] == [(1, 56, 56, 32), (1, 28, 28, 64), (1, 14, 14, 128),
                                                             (1, 7, 7, 256)]
    with pytest.raises(ValueError, match='no class token'):
        inference.features(swin, sv, x, 'cls')
    dino, dv = vitjax.create_model('vit_small_patch14_reg4_dinov2', depth=1, img_size=70)
    assert inference.features(dino, dv, np.zeros((1, 70, 70, 3), np.float32), 'map')['map'].shape == (1, 5, 5, 384)


def _timm_attention(tm, x):
    """Per-block attention weights from timm itself (its explicit, non-fused path)."""
    weights = []
    hooks = []
    for blk in tm.blocks:
        blk.attn.fused_attn = False
        hooks.append(blk.attn.attn_drop.register_forward_hook(lambda m, i, o: weights.append(o.detach().numpy())))
    run_timm(tm, x)
    for h in hooks:
        h.remove()
    return weights


def _rollout_reference(weights, npt, has_cls):
    """Abnar & Zuidema, written out in numpy over timm's weights."""
    n = weights[0].shape[-1]
    result = np.eye(n)[None]
    for w in weights:
        a = w.mean(axis=1)
        a = 0.5 * a + 0.5 * np.eye(n)
        a = a / a.sum(-1, keepdims=True)
        result = a @ result
    rows = result[:, 0] if has_cls else result[:, npt:].mean(axis=1)
    return rows[:, npt:]


@pytest.mark.parametrize('name, kw', [('deit_tiny_patch16_224', dict(depth=3)),
                                      ('vit_small_patch14_reg4_dinov2', dict(depth=2, img_size=98))])
def test_attention_weights_and_rollout_match_timm(name, kw):
    tm = timm_model(name, seed=4, **kw)
    model, variables = port(tm)
    x = np.random.default_rng(0).standard_normal((2, *([kw.get('img_size', 224)] * 2), 3)).astype(np.float32)
    explicit, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
    ours = [state['intermediates'][f'blocks_{i}']['attn']['attn'][0] for i in range(model.depth)]
    theirs = _timm_attention(tm, x)
    assert max(max_diff(a, b) for a, b in zip(ours, theirs)) < 1e-5
    # the explicit path used for maps computes the same logits as the fused one
    assert max_diff(jit_apply(model)(variables, x), explicit) < 1e-5
    maps = inference.attention_maps(model, variables, x)
    grid = maps['rollout'].shape[1:]
    assert grid == model.grid_size
    ref = _rollout_reference(theirs, model.num_prefix_tokens, model.class_token).reshape(2, *grid)
    ref = (ref - ref.min(axis=(1, 2), keepdims=True)) / np.ptp(ref, axis=(1, 2), keepdims=True)
    assert max_diff(maps['rollout'], ref) < 1e-4
    assert maps['last_layer'].min() == 0 and maps['last_layer'].max() == pytest.approx(1)


def test_feature_map_and_attention_grid_with_non_square_patches():
    """8x4 patches on a 16x16 image: a 2x4 grid (patch_size[0] for both axes gave 2x2)."""
    model, variables = vitjax.create_model('vit_tiny_patch16_224', img_size=16, patch_size=(8, 4), depth=1,
                                           num_classes=3)
    x = np.zeros((1, 16, 16, 3), np.float32)
    assert inference.features(model, variables, x, 'map')['map'].shape == (1, 2, 4, 192)
    assert inference.attention_maps(model, variables, x)['rollout'].shape == (1, 2, 4)
