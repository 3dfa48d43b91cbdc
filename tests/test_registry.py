"""Names decode to exactly the config timm builds for them."""
import json
import subprocess
import sys

import pytest
import timm

import vitjax
from porting import timm_vit
from porting.sources import source_of
from vitjax.models import model_config
from vitjax.registry import build_model

TAGGED = ['vit_base_patch16_224.augreg_in21k', 'vit_base_patch16_224.augreg2_in21k_ft_in1k',
          'vit_base_patch16_224.mae', 'vit_base_patch16_224.orig_in21k', 'vit_base_patch16_384.augreg_in21k_ft_in1k',
          'vit_small_patch16_224.augreg_in21k_ft_in1k', 'deit_base_patch16_384.fb_in1k',
          'deit_tiny_distilled_patch16_224.fb_in1k', 'vit_base_patch16_clip_224.openai',
          'vit_base_patch16_clip_224.openai_ft_in12k_in1k', 'vit_base_patch14_reg4_dinov2.lvd142m',
          'deit3_small_patch16_224.fb_in22k_ft_in1k', 'swin_base_patch4_window7_224.ms_in22k',
          'swin_base_patch4_window12_384.ms_in22k_ft_in1k', 'vit_base_patch16_siglip_224.webli',
          'eva02_large_patch14_448.mim_in22k_ft_in22k', 'eva02_large_patch14_448.mim_m38m_ft_in1k',
          'vit_base_patch16_dinov3_qkvb.eupe_lvd1689m', 'vit_so150m_patch16_reg4_gap_256.sbb_e250_in12k',
          'aimv2_large_patch14_224.apple_pt_dist']


# The names timm has that the parser decodes (the rest of timm's names are rows of the zoo table, or refused:
# test_parser_refuses_what_it_would_get_wrong).
PARSED = ['vit_large_patch14_224']


def _first_of_each_family() -> list[str]:
    from vitjax import hub
    rows = hub.zoo()['architectures']
    return sorted({r['family']: n for n, r in sorted(rows.items(), reverse=True)}.values())


def _timm(name):
    return timm.create_model(name, pretrained=False, device='meta')  # structure only, no weights allocated


@pytest.mark.parametrize('name', [
    *PARSED, *TAGGED, *_first_of_each_family(),
    *(pytest.param(n, marks=pytest.mark.zoo) for n in vitjax.list_models() if n not in _first_of_each_family())])
def test_decoded_config_equals_timm(name):
    """`build_model` gives timm's config and preprocessing: the parser's names, tags, and every zoo architecture
    (one per family in `make test`, the rest in `make test-zoo`)."""
    tm = _timm(name)
    ours = build_model(name)
    expected = source_of(tm).torch_config(tm)
    decoded = model_config(ours)
    if 'fc_norm' in decoded:
        decoded['fc_norm'] = ours.use_fc_norm  # timm's reading is the resolved flag
    plain = lambda d: json.loads(json.dumps(d))  # tuples and lists alike
    assert plain({k: v for k, v in decoded.items() if k in expected}) == plain(expected)
    cfg = timm_vit.pretrained_cfg(tm)
    p = ours.pretrained_cfg
    assert (list(p.input_size), list(p.mean), list(p.std), p.crop_pct, p.crop_mode, p.interpolation) == (
        cfg['input_size'], cfg['mean'], cfg['std'], cfg['crop_pct'], cfg.get('crop_mode', 'center'),
        cfg['interpolation'])


def test_every_listed_name_is_a_timm_model():
    assert set(vitjax.list_models()) <= set(timm.list_models())
    assert vitjax.list_models('deit_*distilled*') == ['deit_base_distilled_patch16_224',
                                                     'deit_base_distilled_patch16_384',
                                                     'deit_small_distilled_patch16_224',
                                                     'deit_tiny_distilled_patch16_224']


def test_parser_refuses_what_it_would_get_wrong():
    """timm's SBB ViTs without weights: `gap` means other heads, norms and embeddings from one name to the next."""
    for name in ('vit_base_patch16_gap_224', 'vit_base_patch16_reg4_gap_256'):
        with pytest.raises(ValueError, match="unsupported name part 'gap'"):
            build_model(name)
    found = []
    for name in timm.list_models(['vit_*', 'deit*', 'swin_*']):
        if name not in vitjax.list_models():
            try:
                build_model(name)
                found.append(name)
            except ValueError:
                pass
    assert found == PARSED


def test_overrides():
    m = build_model('vit_small_patch16_224', num_classes=3, img_size=96, drop_path_rate=0.1)
    assert (m.num_classes, m.img_size, m.drop_path_rate, m.embed_dim) == (3, 96, 0.1, 384)
    assert m.pretrained_cfg.input_size == (3, 96, 96)


@pytest.mark.parametrize('name, match', [('vit_bse_patch16_224', 'did you mean vit_base_patch16_224'),
                                         ('resnet50', 'family'), ('vit_base_patch16_rpn_224', "part 'rpn'"),
                                         ('vit_base_224', 'patch size')])
def test_unknown_names(name, match):
    with pytest.raises(ValueError, match=match):
        vitjax.create_model(name)


def test_vitjax_imports_without_torch_or_tensorflow():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['tensorflow'] = None\n"
            "import vitjax; m, v = vitjax.create_model('vit_tiny_patch16_224', depth=1, img_size=32)\n"
            "print(m.apply(v, __import__('numpy').zeros((1, 32, 32, 3), 'float32')).shape)")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '(1, 1000)'


def test_names_outside_the_zoo_decode_for_random_init_and_take_no_tag():
    m = build_model('vit_base_patch8_384')  # timm has no weights for it: decoded from its parts
    assert (m.patch_size, m.img_size, m.embed_dim) == (8, 384, 768)
    with pytest.raises(ValueError, match='no pretrained weights for vit_base_patch8_384'):
        build_model('vit_base_patch8_384.augreg_in21k')
    with pytest.raises(ValueError, match="zoo's names only"):
        build_model('eva02_small_patch3_224')


@pytest.mark.slow
def test_a_size_that_is_not_whole_patches_floors_as_timm_at_the_models_own_size():
    """timm's strict PatchEmbed drops the trailing pixels (SigLIP so400m/14 at 384); a dynamic model refuses."""
    import numpy as np
    m, v = vitjax.create_model('vit_tiny_patch16_224', img_size=232, num_classes=3)
    x = np.random.default_rng(0).standard_normal((1, 232, 232, 3)).astype(np.float32)
    y = x.copy()
    y[:, 224:], y[:, :, 224:] = 0, 0  # the pixels past the last whole patch do not count
    np.testing.assert_array_equal(np.asarray(m.apply(v, x)), np.asarray(m.apply(v, y)))
    d, dv = vitjax.create_model('vit_tiny_patch16_224', num_classes=3, dynamic_img_size=True)
    with pytest.raises(ValueError, match='not divisible by patch size'):
        d.apply(dv, x[:, :230, :230])
