"""timm families beyond ViT/DeiT through the same config reader, table and CLI: DINOv2, DeiT III, CLIP, SigLIP.

Small depth keeps these quick; widths, patch sizes, token layouts and heads are the real ones."""
import json

import jax
import numpy as np
import pytest

from conftest import images, max_diff, port, run_timm, timm_model
from porting import convert, random_init

FAMILIES = {
    'vit_base_patch14_reg4_dinov2.lvd142m': dict(reg_tokens=4, no_embed_class=True, patch_size=14),
    'vit_base_patch14_dinov2.lvd142m': dict(reg_tokens=0, no_embed_class=False, patch_size=14),
    'deit3_base_patch16_224': dict(no_embed_class=True),
    'vit_base_patch16_clip_224.openai_ft_in12k_in1k': dict(pre_norm=True, norm_eps=1e-5),
    'vit_base_patch16_clip_224.laion2b_ft_in12k_in1k': dict(pre_norm=True, norm_eps=1e-5, act_layer='gelu'),
    'vit_base_patch16_clip_quickgelu_224': dict(pre_norm=True, act_layer='quick_gelu'),
    'vit_base_patch16_siglip_224': dict(global_pool='map', class_token=False),
    'vit_so150m_patch16_reg4_gap_256': dict(class_token=False, reg_tokens=4, global_pool='avg', fc_norm=False),
    'aimv2_large_patch14_224': dict(norm_layer='rmsnorm', mlp_layer='swiglu', proj_bias=False, embed_norm=True,
                                    act_layer='silu'),
}


@pytest.mark.parametrize('name', list(FAMILIES))
def test_family_converts_through_cli(tmp_path, name):
    ckpt = random_init.save(random_init.create(name, seed=2, depth=2), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), '--model-arg', 'depth=2',
                         '--out', str(tmp_path / 'out')]) == 0
    cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())['model']
    for k, v in FAMILIES[name].items():
        assert cfg[k] == v, k
    assert json.loads((tmp_path / 'out' / 'parity.json').read_text())['passed']


def test_dinov2_dynamic_size_odd_input():
    tm = timm_model('vit_small_patch14_reg4_dinov2', depth=2, dynamic_img_size=True)
    model, variables = port(tm)
    assert model.dynamic_img_size and model.img_size == 518 and model.init_values is not None
    # Logits and features in one jitted program, compiled once per size (eager apply compiles op by op).
    run = jax.jit(lambda v, x: (model.apply(v, x), model.apply(v, x, method=model.forward_features)))
    for size in ((98, 154), (70, 70)):
        x = images(model, batch=1, size=size)
        logits, feats = run(variables, x)
        assert max_diff(logits, run_timm(tm, x)) < 1e-4
        assert feats.shape == (1, 5 + (size[0] // 14) * (size[1] // 14), 384)


@pytest.mark.slow
def test_siglip_map_head_with_classes():
    tm = timm_model('vit_base_patch16_siglip_224', depth=1, num_classes=10, embed_dim=192, num_heads=3,
                    img_size=64)
    model, variables = port(tm)
    x = images(model)
    ref = run_timm(tm, x)
    assert 'attn_pool' in variables['params'] and ref.shape == (2, 10)
    assert max_diff(model.apply(variables, x), ref) < 1e-5 * max(1, np.abs(ref.numpy()).max())


@pytest.mark.zoo
@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_base_patch14_reg4_dinov2.lvd142m', 'vit_base_patch16_siglip_224',
                                  'aimv2_large_patch14_224'])
def test_family_full_size_through_cli(tmp_path, name):
    """Full depth and width (DINOv2 at 518), registry-decoded config equal to the converted one: registers,
    the MAP head, RMSNorm + SwiGLU (DeiT III's and CLIP's options are in FAMILIES above at depth 2, and in
    tests/hub_zoo.py at depth 1 and full width)."""
    import vitjax
    from vitjax.models import model_config
    from vitjax.registry import build_model
    ckpt = random_init.save(random_init.create(name, seed=3), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), '--out', str(tmp_path / 'out')]) == 0
    assert json.loads((tmp_path / 'out' / 'parity.json').read_text())['passed']
    model, _ = vitjax.load(tmp_path / 'out')
    decoded = build_model(name)  # the registry name means these weights (fc_norm: resolved vs default None)
    assert model.use_fc_norm == decoded.use_fc_norm
    assert {**model_config(model), 'fc_norm': None} == {**model_config(decoded), 'fc_norm': None}
    assert model.pretrained_cfg == decoded.pretrained_cfg


@pytest.mark.parametrize('name', ['aimv2_large_patch14_224', 'vit_so150m_patch16_reg4_gap_256'])
def test_new_vit_options_export_back_bit_exact(tmp_path, name):
    """RMSNorm, SwiGLU, bias-free projections (AIMv2) and SO150M's token layout map both ways: timm -> vitjax ->
    timm is the same file."""
    from safetensors.numpy import load_file
    from porting import export
    src = random_init.save(random_init.create(name, seed=5, depth=1), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(src), '--model-arg', 'depth=1',
                         '--out', str(tmp_path / 'out'), '--tolerance', '1e-5']) == 0
    assert export.main(['--model', str(tmp_path / 'out'), '--out', str(tmp_path / 'back.safetensors')]) == 0
    a, b = load_file(str(src)), load_file(str(tmp_path / 'back.safetensors'))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
    assert name != 'aimv2_large_patch14_224' or {'patch_embed.norm.weight', 'blocks.0.mlp.fc1_g.weight'} <= set(a)


@pytest.mark.slow
def test_train_py_fine_tunes_aimv2(tmp_path):
    """The RMSNorm / SwiGLU family through `train.py --config.init` and `vitjax features`."""
    from conftest import fine_tune_family
    fine_tune_family(tmp_path, 'aimv2_large_patch14_224', dict(depth=2, embed_dim=192, num_heads=4), 28)
