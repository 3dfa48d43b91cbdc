"""DeepSeek V4's vision tower (timm's deepseek_vit) against timm itself with perturbed random weights: every
pretrained architecture (classifier, `_align`, `_enc`) through the converter CLI and back bit for bit, the forward
API on non-square images (the aligner's LLM-width tokens over a grid it pads, the map, intermediates with and
without the final norm, attention weights, `dynamic_img_pad`), the per-tag aligner width, the full-size tower,
and fine-tuning the classifier through train.py. Reduced depth and width except the full-size test."""
import json

import jax
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, max_diff, port, run_timm,
                      timm_model, tower_attention_matches_timm)

NAMES = ['deepseek_vit_412m', 'deepseek_vit_412m_align', 'deepseek_vit_412m_enc']
SMALL = dict(depth=2, embed_dim=128, num_heads=4, img_size=168)  # a 12x12 patch grid


def tol(ref):
    return 1e-5 * max(1, float(np.abs(ref).max()))


def test_every_pretrained_deepseek_tower_and_tag_is_in_the_zoo():
    """All 6 tags; an `_enc` / `_align` tag's aligner is as wide as its LLM (the tag decides, as in timm)."""
    import timm
    from vitjax.registry import build_model
    z = json.load(open('vitjax/zoo.json'))
    tags = sorted(timm.list_models(module='deepseek_vit', pretrained=True))
    assert len(tags) == 6 and sorted({t.split('.')[0] for t in tags}) == NAMES
    assert all(t in z['tags'] for t in tags)
    assert {z['architectures'][n]['family'] for n in NAMES} == {'deepseek_vit', 'deepseek_vit_enc'}
    widths = {'deepseek_vit_412m_enc.deepseek_v4_1_flash': 5120, 'deepseek_vit_412m_enc.deepseek_v4_flash_vision_exp':
              4096, 'deepseek_vit_412m_align.deepseek_v4_flash_vision_exp': 4096}
    assert {n: build_model(n).out_features for n in widths} == widths


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_deepseek_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit."""
    family = 'deepseek_vit_enc' if name.endswith('_enc') else 'deepseek_vit'
    args = SMALL if name == 'deepseek_vit_412m' else dict(SMALL, out_features=96)
    saved, model, variables = convert_and_export(tmp_path, name, family, args)
    p = variables['params'] if family == 'deepseek_vit_enc' else variables['params']['encoder']
    assert ('aligner' in p) == (name != 'deepseek_vit_412m') and 'pos_embed' not in p
    assert saved['out_features'] == (0 if name == 'deepseek_vit_412m' else 96)


@pytest.fixture(scope='module')
def towers():
    """The encoder and the aligning classifier, reduced; a non-square 140x98 input: a 10x7 patch grid, which the
    aligner pads to 12x9 (4x3 tokens)."""
    enc = timm_model('deepseek_vit_412m_enc', seed=1, out_features=96, **SMALL)
    cls = timm_model('deepseek_vit_412m_align', seed=2, out_features=96, num_classes=7, **SMALL)
    x = np.random.default_rng(0).standard_normal((2, 140, 98, 3)).astype(np.float32)
    return (enc, *port(enc)), (cls, *port(cls)), x


@pytest.mark.slow
def test_encoder_tokens_map_and_intermediates_match_timm(towers):
    (tm, model, variables), _, x = towers
    tokens, feats = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.forward_features)))(
        variables, x)
    ref = run_timm(tm, x).numpy()
    assert tokens.shape == ref.shape == (2, 4 * 3, 96) and max_diff(tokens, ref) < tol(ref)
    assert model.feature_grid(140, 98) == (4, 3)
    t_feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert feats.shape == (2, 10, 7, 128) and max_diff(feats, t_feats) < tol(t_feats)
    pre = run_timm(tm, x, lambda m, t: m.aligner(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)
    for fmt, norm in (('NCHW', False), ('NLC', True)):
        t_final, t_maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, output_fmt=fmt, norm=norm))
        final, maps = model.apply(variables, x, output_fmt=fmt, norm=norm, method=model.forward_intermediates)
        assert [m.shape for m in maps] == [tuple(m.shape) for m in t_maps]
        assert all(max_diff(a, b.numpy()) < tol(b.numpy()) for a, b in zip(maps, t_maps))
        assert max_diff(final, t_final.numpy()) < tol(t_final.numpy())


@pytest.mark.slow
def test_classifier_with_the_aligner_matches_timm(towers):
    _, (tm, model, variables), x = towers
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    feats = jax.jit(lambda v, x: model.apply(v, x, method=model.forward_features))(variables, x)
    assert feats.shape == (2, 12, 96)
    pre = run_timm(tm, x, lambda m, t: m.forward_head(m.forward_features(t), pre_logits=True)).numpy()
    assert max_diff(model.apply(variables, feats, pre_logits=True, method=model.forward_head), pre) < tol(pre)
    t_final, _ = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, indices=1))
    final, _ = model.apply(variables, x, indices=1, method=model.forward_intermediates)
    assert max_diff(final, t_final.numpy()) < tol(t_final.numpy())


@pytest.mark.slow
def test_attention_weights_match_timm(towers):
    (tm, model, variables), _, x = towers
    tower_attention_matches_timm(tm, model, variables, x, (10, 7))


@pytest.mark.slow
def test_dynamic_img_pad_takes_any_size_as_timm():
    tm = timm_model('deepseek_vit_412m_enc', seed=3, out_features=96, dynamic_img_pad=True, **SMALL)
    model, variables = port(tm)
    assert model.dynamic_img_pad and model.token_grid(130, 101) == (10, 8) and model.feature_grid(130, 101) == (4, 3)
    x = np.random.default_rng(1).standard_normal((1, 130, 101, 3)).astype(np.float32)
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    with pytest.raises(ValueError, match=r'input size \(130, 101\) is not divisible by patch size'):
        model.clone(dynamic_img_pad=False).apply(variables, x)


def test_bad_deepseek_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.deepseek_vit import DeepseekVitClassifier, DeepseekVitEncoder
    base = dict(img_size=56, embed_dim=64, depth=1, num_heads=4, out_features=8)
    for cls, kwargs, msg in [(DeepseekVitEncoder, dict(num_classes=3), 'num_classes=3: the encoder has no head'),
                             (DeepseekVitEncoder, dict(out_features=0), 'out_features=0: the aligner projects'),
                             (DeepseekVitEncoder, dict(global_pool='merge'), "global_pool='merge'"),
                             (DeepseekVitClassifier, dict(global_pool='align'), "global_pool='align'"),
                             (DeepseekVitClassifier, dict(encoder_pool='avg'), "encoder_pool='avg'"),
                             (DeepseekVitEncoder, dict(num_heads=3), 'num_heads=3'),
                             (DeepseekVitEncoder, dict(downsample_ratio=0), 'downsample_ratio=0')]:
        with pytest.raises(ValueError, match=msg):
            cls(**{**base, **kwargs}).init(jax.random.PRNGKey(0), jnp.zeros((1, 56, 56, 3)))


@pytest.mark.zoo
@pytest.mark.slow
def test_deepseek_full_size(tmp_path):
    """The 412M tower whole (32 blocks x 1024, the aligner to 5120) through convert, at timm's smallest input
    (126 px: 9x9 patches, 3x3 tokens; the weights do not depend on the size)."""
    model = full_size_matches_registry(tmp_path, 'deepseek_vit_412m_enc', 1e-5, dict(img_size=126))
    assert model.depth == 32 and model.out_features == 5120 and model.feature_grid(126, 126) == (3, 3)


@pytest.mark.slow
def test_train_py_fine_tunes_deepseek_classifier(tmp_path):
    """`--config.init` a converted, narrowed DeepSeek classifier, trained on the digits at 28 px (a 2x2 patch grid,
    RoPE the only position encoding), then `vitjax features` / `attention` and export back."""
    fine_tune_family(tmp_path, 'deepseek_vit_412m', dict(depth=2, embed_dim=192, num_heads=3, img_size=28), 28)
