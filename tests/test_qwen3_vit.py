"""Qwen3-VL / Qwen3.5 / Qwen3.8's vision tower (timm's qwen3_vit) against timm itself with perturbed random weights:
every pretrained architecture (classifier, `_merge`, `_enc`) through the converter CLI and back bit for bit, the
forward API on a non-square image (the projector's LLM-width tokens, the map, intermediates, attention weights),
the per-tag projector width, and fine-tuning the classifier through train.py. Reduced depth (two blocks) except
the full-size test."""
import json

import jax
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, max_diff, port, run_timm,
                      timm_model, tower_attention_matches_timm)

SIZES = ('88m', '306m', '416m')
NAMES = [f'qwen3_vit_{s}{v}' for s in SIZES for v in ('', '_merge', '_enc')]
SMALL = dict(depth=2, embed_dim=128, num_heads=4, img_size=256)  # a 16x16 patch grid: the 48x48 grid resampled


def tol(ref):
    return 1e-5 * max(1, float(np.abs(ref).max()))


def test_every_pretrained_qwen3_tower_and_tag_is_in_the_zoo():
    """All 39 tags; an `_enc` / `_merge` tag's projector is as wide as its LLM (the tag decides, as in timm)."""
    import timm
    from vitjax.registry import build_model
    z = json.load(open('vitjax/zoo.json'))
    tags = sorted(timm.list_models(module='qwen3_vit', pretrained=True))
    assert len(tags) == 39 and sorted({t.split('.')[0] for t in tags}) == sorted(NAMES)
    assert all(t in z['tags'] for t in tags)
    assert {z['architectures'][n]['family'] for n in NAMES} == {'qwen3_vit', 'qwen3_vit_enc'}
    widths = {'qwen3_vit_306m_enc.qwen3_5_2b': 2048, 'qwen3_vit_306m_enc.qwen3_vl_4b': 2560,
              'qwen3_vit_416m_merge.qwen3_8_27b': 5120, 'qwen3_vit_416m_enc.qwen3_vl_30b_a3b': 2048}
    assert {n: build_model(n).out_features for n in widths} == widths


@pytest.mark.slow
@pytest.mark.parametrize('name', ['qwen3_vit_88m', 'qwen3_vit_306m_merge', 'qwen3_vit_416m_enc'])
def test_qwen3_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit: each of the three kinds
    (at reduced width the sizes differ only in their projector; tests/hub_zoo.py does every architecture)."""
    family = 'qwen3_vit_enc' if name.endswith('_enc') else 'qwen3_vit'
    saved, model, variables = convert_and_export(tmp_path, name, family, SMALL)
    p = variables['params'] if family == 'qwen3_vit_enc' else variables['params']['encoder']
    assert p['pos_embed'].shape == (1, 48 * 48, model.embed_dim)
    assert ('merger' in p) == (not name.endswith(('88m', '306m', '416m')))


@pytest.fixture(scope='module')
def towers():
    """The 88M encoder and merge classifier at depth 2, and a non-square 160x224 input (a 10x14 patch grid)."""
    enc = timm_model('qwen3_vit_88m_enc', seed=1, depth=2)
    cls = timm_model('qwen3_vit_88m_merge', seed=2, depth=2, num_classes=7)
    x = np.random.default_rng(0).standard_normal((2, 160, 224, 3)).astype(np.float32)
    return (enc, *port(enc)), (cls, *port(cls)), x


@pytest.mark.slow
def test_encoder_tokens_map_and_intermediates_match_timm(towers):
    (tm, model, variables), _, x = towers
    tokens, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.forward_features)))(
        variables, x)
    ref = run_timm(tm, x).numpy()
    assert tokens.shape == ref.shape == (2, 5 * 7, 1024) and max_diff(tokens, ref) < tol(ref)
    t_feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert feats.shape == (2, 10, 14, 768) and max_diff(feats, t_feats) < tol(t_feats)
    pre = run_timm(tm, x, lambda m, t: m.merger(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)
    for fmt in ('NCHW', 'NLC'):
        t_final, t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, output_fmt=fmt))
        final, maps = model.apply(variables, x, output_fmt=fmt, method=model.forward_intermediates)
        assert [m.shape for m in maps] == [tuple(m.shape) for m in t_maps]
        assert all(max_diff(a, b.numpy()) < tol(b.numpy()) for a, b in zip(maps, t_maps))
        assert max_diff(final, t_final.numpy()) < tol(t_final.numpy())


@pytest.mark.slow
def test_classifier_with_the_projector_matches_timm(towers):
    _, (tm, model, variables), x = towers
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    feats = jax.jit(lambda v, x: model.apply(v, x, method=model.forward_features))(variables, x)
    assert feats.shape == (2, 35, 1024) and model.feature_grid(160, 224) == (5, 7)
    pre = run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)


@pytest.mark.slow
def test_attention_weights_match_timm(towers):
    (tm, model, variables), _, x = towers
    tower_attention_matches_timm(tm, model, variables, x, (10, 14))


def test_an_odd_patch_grid_is_refused_by_the_projector_only():
    import jax.numpy as jnp
    from vitjax.models.qwen3_vit import Qwen3VitEncoder
    model = Qwen3VitEncoder(img_size=64, embed_dim=64, depth=1, num_heads=4, out_features=8)
    x = jnp.zeros((1, 48, 64, 3))  # a 3x4 grid
    with pytest.raises(ValueError, match=r'input size \(48, 64\).*2x2 patches'):
        jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    raw = model.clone(global_pool='')
    assert jax.eval_shape(raw.apply, jax.eval_shape(raw.init, jax.random.PRNGKey(0), x), x).shape == (1, 3, 4, 64)


@pytest.mark.zoo
@pytest.mark.slow
def test_qwen3_full_size(tmp_path):
    """The 88M tower whole (12 blocks at 768 px: 48x48 patches, the position grid as it is) through convert."""
    model = full_size_matches_registry(tmp_path, 'qwen3_vit_88m_enc', 1e-5)
    assert model.depth == 12 and model.out_features == 1024 and model.num_features == 1024


def test_bad_qwen3_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.qwen3_vit import Qwen3VitClassifier, Qwen3VitEncoder
    base = dict(img_size=64, embed_dim=64, depth=1, num_heads=4)
    for cls, kwargs, msg in [(Qwen3VitEncoder, dict(num_classes=3), 'num_classes=3: the encoder has no head'),
                             (Qwen3VitEncoder, dict(global_pool='token'), "global_pool='token'"),
                             (Qwen3VitClassifier, dict(global_pool='merge'), "global_pool='merge'"),
                             (Qwen3VitClassifier, dict(encoder_pool='avg'), "encoder_pool='avg'"),
                             (Qwen3VitEncoder, dict(num_heads=3), 'num_heads=3'),
                             (Qwen3VitEncoder, dict(merge_size=0), 'merge_size=0')]:
        with pytest.raises(ValueError, match=msg):
            cls(**{**base, **kwargs}).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_qwen3_classifier(tmp_path):
    """`--config.init` a converted, narrowed Qwen3 classifier, trained on the digits at 32 px (a 2x2 patch grid:
    the 48x48 position grid resampled per input), then `vitjax features` / `attention` and export back."""
    fine_tune_family(tmp_path, 'qwen3_vit_88m', dict(depth=2, embed_dim=192, num_heads=3, img_size=32), 32)
