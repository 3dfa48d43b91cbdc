"""timm's VisionTransformerRelPos (vision_transformer_relpos) against timm itself with perturbed random weights:
every pretrained architecture (the log-coordinate MLP bias per block or shared, class token + token or average
pool, residual post-norm blocks) through the converter CLI and back bit for bit, the table variant, another input
size, the forward API, scan / remat, and fine-tuning through train.py. Reduced depth; real widths and grids."""
import json

import jax
import numpy as np
import pytest

from conftest import (check_scan_and_remat, convert_and_export, fine_tune_family, full_size_matches_registry, images,
                      max_diff, port, run_timm, timm_attention_weights, timm_model)
from porting import convert, random_init

# name: what its config must read as
NAMES = {
    'vit_relpos_small_patch16_224': dict(fc_norm=True, class_token=False, qkv_bias=False),
    'vit_relpos_medium_patch16_224': dict(fc_norm=True, rel_pos_dim=128),  # timm's default width
    'vit_relpos_base_patch16_224': dict(fc_norm=True),
    'vit_relpos_medium_patch16_cls_224': dict(class_token=True, global_pool='token', rel_pos_dim=256),
    'vit_relpos_base_patch16_clsgap_224': dict(class_token=True, global_pool='avg', fc_norm=True),
    'vit_relpos_medium_patch16_rpn_224': dict(res_post_norm=True, init_values=None),
    'vit_relpos_base_patch32_plus_rpn_256': dict(res_post_norm=True, patch_size=32, img_size=256),
    'vit_srelpos_small_patch16_224': dict(shared_rel_pos=True, rel_pos_dim=384, fc_norm=False),
    'vit_srelpos_medium_patch16_224': dict(shared_rel_pos=True, rel_pos_dim=512),
}
SMALL = dict(depth=2, embed_dim=192, num_heads=3)
TOLERANCE = 1e-5


def test_every_pretrained_relpos_architecture_is_in_the_zoo():
    import timm
    zoo = json.load(open('vitjax/zoo.json'))['architectures']
    pretrained = sorted({n.split('.')[0] for n in timm.list_models(module='vision_transformer_relpos',
                                                                   pretrained=True)})
    assert pretrained == sorted(NAMES)
    assert all(zoo[n]['family'] == 'relpos_vit' and zoo[n]['config']['rel_pos_type'] == 'mlp' for n in NAMES)
    # each config as the converter reads it (zoo.json, which tests/test_zoo.py holds to timm)
    assert {n: {k: zoo[n]['config'][k] for k in want} for n, want in NAMES.items()} == NAMES


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_relpos_small_patch16_224', 'vit_relpos_medium_patch16_cls_224',
                                  'vit_relpos_base_patch32_plus_rpn_256', 'vit_srelpos_medium_patch16_224'])
def test_relpos_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit, one name per kind of block
    and pool (tests/hub_zoo.py does every architecture at depth 1)."""
    saved, model, _ = convert_and_export(tmp_path, name, 'relpos_vit', tolerance=TOLERANCE)
    assert {k: saved[k] for k in NAMES[name]} == NAMES[name]
    assert type(model).__name__ == 'VisionTransformerRelPos' and model.depth == 2


@pytest.mark.parametrize('name', ['vit_relpos_medium_patch16_cls_224', 'vit_srelpos_small_patch16_224'])
def test_table_bias_variant_and_attention_maps(name):
    """rel_pos_type='bias' (timm's RelPosBias table, with a class token or without), no pretrained name uses it:
    timm's logits, and the sown attention maps are timm's softmax(q·k/√d + bias)."""
    tm = timm_model(name, img_size=64, rel_pos_type='bias', **SMALL)
    model, variables = port(tm)
    assert model.rel_pos_type == 'bias'
    x = images(model, batch=1)
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < TOLERANCE * max(1, np.abs(ref).max())
    if model.shared_rel_pos:
        return
    _, state = model.apply(variables, x, mutable=['intermediates'])
    ours = np.asarray(state['intermediates']['blocks_0']['attn']['attn'][0])
    assert max_diff(ours, timm_attention_weights(tm, x)) < 1e-6


@pytest.mark.slow
def test_forward_api_matches_timm():
    """forward_features, pre-logits and forward_intermediates of a class-token, post-norm model."""
    import torch
    tm = timm_model('vit_relpos_medium_patch16_rpn_224', img_size=96, class_token=True, **SMALL)
    model, variables = port(tm)
    x = images(model)
    tol = lambda ref: TOLERANCE * max(1, float(np.abs(ref).max()))
    feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    ours = jax.jit(lambda v, x: model.apply(v, x, method=model.forward_features))(variables, x)
    assert max_diff(ours, feats) < tol(feats)
    pre = tm.forward_head(torch.from_numpy(feats), pre_logits=True).detach().numpy()
    mine = jax.jit(lambda v, f: model.apply(v, f, pre_logits=True, method=model.forward_head))(variables, feats)
    assert max_diff(mine, pre) < tol(pre)
    maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, indices=2, intermediates_only=True))
    mine = model.apply(variables, x, indices=2, intermediates_only=True, method=model.forward_intermediates)
    for a, b in zip(mine, maps):
        assert a.shape == tuple(b.shape) and max_diff(a, b.numpy()) < tol(b.numpy())


@pytest.mark.slow
def test_relpos_at_another_size(tmp_path):
    """--img-size 160x192: the MLP bias is recomputed for the new grid (its weights do not depend on it), as timm."""
    import vitjax
    name = 'vit_srelpos_small_patch16_224'
    src = random_init.save(random_init.create(name, seed=3, **SMALL), tmp_path / 'm.safetensors')
    args = [a for k, v in SMALL.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, '--img-size', '160x192',
                         '--out', str(tmp_path / 'out'), '--tolerance', str(TOLERANCE)]) == 0
    model, _ = vitjax.load(tmp_path / 'out')
    assert model.grid_size == (10, 12)


@pytest.mark.zoo
@pytest.mark.slow
def test_relpos_full_size(tmp_path):
    model = full_size_matches_registry(tmp_path, 'vit_relpos_base_patch16_clsgap_224', TOLERANCE)
    assert model.depth == 12 and model.embed_dim == 768


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_srelpos_small_patch16_224', 'vit_relpos_medium_patch16_rpn_224'])
def test_scan_blocks_and_remat_match_the_unrolled_model(name):
    """scan_blocks with the shared bias (computed once, closed over) or post-norm blocks, and grad_checkpointing
    (gradients in eval mode: timm's bias MLP always drops out in training)."""
    tm = timm_model(name, img_size=(64, 48), depth=3, embed_dim=192, num_heads=3)
    model, variables = port(tm)
    x = images(model)
    check_scan_and_remat(model, variables, x, run_timm(tm, x).numpy(), TOLERANCE, train=False)


def test_bad_relpos_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.relpos_vit import VisionTransformerRelPos as M
    for kwargs, msg in [(dict(res_post_norm=True, init_values=0.1), 'no LayerScale'),
                        (dict(rel_pos_type='cpb'), "rel_pos_type='cpb'"),
                        (dict(reg_tokens=2), 'at most a class token'),
                        (dict(rel_pos_type='', shared_rel_pos=True), 'shared_rel_pos needs')]:
        with pytest.raises(ValueError, match=msg):
            M(depth=1, **kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_relpos(tmp_path):
    """`--config.init` a converted srelpos ViT: trained on the digits at 32x32 (the shared MLP bias recomputed for
    the 2x2 grid), then `vitjax features` / `attention` and export back to timm with parity."""
    fine_tune_family(tmp_path, 'vit_srelpos_small_patch16_224', SMALL, 32)
