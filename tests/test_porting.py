"""timm -> Flax conversion: strictness both ways, exact round trip, and full-size parity."""
import numpy as np
import pytest
import torch

from conftest import images, max_diff, port, run_timm, timm_model
from porting import timm_vit
from vitjax.weights.engine import ConversionError, UnsupportedModel
from porting import sources

TIMM_VIT = sources.get('timm', 'vit')

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


@pytest.fixture(scope='module')
def small():
    tm = timm_model('deit_tiny_distilled_patch16_224', **SMALL)
    return tm, timm_vit.torch_config(tm)


def test_missing_key_is_listed(small):
    tm, cfg = small
    sd = tm.state_dict()
    del sd['blocks.1.mlp.fc2.bias'], sd['dist_token']
    with pytest.raises(ConversionError) as e:
        TIMM_VIT.from_state(sd, cfg)
    assert 'missing target: blocks_1/mlp/fc2/bias' in str(e.value)
    assert 'missing target: dist_token' in str(e.value)


def test_extra_key_is_listed(small):
    tm, cfg = small
    sd = tm.state_dict()
    sd['blocks.0.attn.rope.freqs'] = torch.zeros(4)
    sd['blocks.2.norm1.weight'] = torch.zeros(64)  # a block the config does not have
    with pytest.raises(ConversionError) as e:
        TIMM_VIT.from_state(sd, cfg)
    assert 'unused source key: blocks.0.attn.rope.freqs' in str(e.value)
    assert 'blocks_2/norm1/scale (no target in this model)' in str(e.value)


def test_wrong_shape_is_listed(small):
    tm, cfg = small
    sd = tm.state_dict()
    sd['pos_embed'] = torch.zeros(1, 7, 64)
    with pytest.raises(ConversionError, match=r'wrong shape: pos_embed: \(1, 7, 64\) != \(1, 18, 64\)'):
        TIMM_VIT.from_state(sd, cfg)


def test_config_mismatch_fails_strictly(small):
    tm, cfg = small
    with pytest.raises(ConversionError, match='wrong shape'):
        TIMM_VIT.from_state(tm.state_dict(), {**cfg, 'num_heads': 8, 'embed_dim': 32})


@pytest.mark.parametrize('name, kwargs', [
    ('deit_tiny_distilled_patch16_224', SMALL),
    ('vit_tiny_patch16_224', dict(SMALL, reg_tokens=2, no_embed_class=True, init_values=0.1, qk_norm=True,
                                  pre_norm=True, global_pool='avg', class_token=False)),
])
def test_round_trip_is_bit_exact(name, kwargs):
    tm = timm_model(name, **kwargs)
    cfg = timm_vit.torch_config(tm)
    back = TIMM_VIT.to_state(TIMM_VIT.from_state(tm.state_dict(), cfg), cfg)
    sd = tm.state_dict()
    assert set(back) == set(sd)
    for k, v in sd.items():
        np.testing.assert_array_equal(back[k], v.numpy(), err_msg=k)


def test_unsupported_timm_model_is_named():
    tm = timm_model('vit_tiny_patch16_224', **SMALL, patch_drop_rate=0.1)
    with pytest.raises(UnsupportedModel, match='patch dropout'):
        timm_vit.torch_config(tm)


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.parametrize('name, kwargs', [
    ('vit_base_patch16_224.augreg_in21k_ft_in1k', {}),
    ('deit_tiny_distilled_patch16_224', {}),
    ('vit_base_patch16_224.mae', {}),                                   # MAE encoder, headless
    ('vit_base_patch16_224.mae', dict(global_pool='avg', num_classes=1000)),  # MAE fine-tune: avg pool + fc_norm
])
def test_full_size_parity(name, kwargs):
    tm = timm_model(name, **kwargs)
    model, variables = port(tm)
    x = images(model)
    ref = run_timm(tm, x).numpy()
    out = np.asarray(model.apply(variables, x))
    assert out.shape == ref.shape
    assert max_diff(out, ref) <= 1e-4 * max(1.0, np.abs(ref).max())
    if kwargs.get('global_pool') == 'avg':
        assert model.use_fc_norm and 'fc_norm' in variables['params'] and 'norm' not in variables['params']
