"""timm's Beit (BEiT, BEiT v2) against timm itself with perturbed random weights (relative-position tables,
LayerScale and norms included): every pretrained architecture through the converter CLI and back bit for bit,
another input size (tables resized as timm's checkpoint_filter_fn does), the forward API, scan / remat, and
fine-tuning through train.py. Reduced depth keeps these quick; widths, patch grids and heads are the real ones."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file

from conftest import (check_scan_and_remat, convert_and_export, fine_tune_family, full_size_matches_registry, images,
                      max_diff, port, run_timm, timm_attention_weights, timm_model)
from porting import convert, random_init

NAMES = ['beit_base_patch16_224', 'beit_base_patch16_384', 'beit_large_patch16_224', 'beit_large_patch16_384',
         'beit_large_patch16_512', 'beitv2_base_patch16_224', 'beitv2_large_patch16_224']
SMALL = dict(depth=2, embed_dim=192, num_heads=3)
TOLERANCE = 1e-5  # the goal; the CLI's default check is 1e-4


def test_every_pretrained_beit_architecture_is_in_the_zoo():
    import timm
    zoo = json.load(open('vitjax/zoo.json'))['architectures']
    pretrained = sorted({n.split('.')[0] for n in timm.list_models(module='beit', pretrained=True)})
    assert pretrained == sorted(NAMES)
    assert all(zoo[n]['family'] == 'beit' and zoo[n]['config']['rel_pos_type'] == 'bias' for n in NAMES)


@pytest.mark.slow
@pytest.mark.parametrize('name', ['beit_base_patch16_384', 'beitv2_large_patch16_224'])
def test_beit_converts_exports_and_loads(tmp_path, name):
    """convert (parity at 1e-5) -> load -> export -> the same tensors, bit for bit; one table per block. BEiT and
    BEiT v2 here; tests/hub_zoo.py does every architecture at depth 1."""
    saved, model, variables = convert_and_export(tmp_path, name, 'beit', tolerance=TOLERANCE)
    assert saved['rel_pos_type'] == 'bias' and saved['pos_embed'] == 'none'
    assert type(model).__name__ == 'Beit' and model.depth == 2
    gh, gw = model.grid_size
    table = variables['params']['blocks_1']['attn']['rel_pos']['relative_position_bias_table']
    assert table.shape == ((2 * gh - 1) * (2 * gw - 1) + 3, model.num_heads)


@pytest.mark.slow
def test_forward_api_matches_timm():
    """Logits, forward_features, forward_head(pre_logits) and forward_intermediates (NCHW, prefix split off)."""
    tm = timm_model('beitv2_base_patch16_224', img_size=96, **SMALL)
    model, variables = port(tm)
    x = images(model)
    run = lambda **kw: jax.jit(lambda v, x: model.apply(v, x, **kw))(variables, x)
    tol = lambda ref: TOLERANCE * max(1, float(np.abs(ref).max()))
    ref = run_timm(tm, x).numpy()
    assert max_diff(run(), ref) < tol(ref)
    feats = run_timm(tm, x, lambda m, t: m.forward_features(t)).numpy()
    assert max_diff(run(method=model.forward_features), feats) < tol(feats)
    import torch
    pre = tm.forward_head(torch.from_numpy(feats), pre_logits=True).detach().numpy()
    ours = jax.jit(lambda v, f: model.apply(v, f, pre_logits=True, method=model.forward_head))(variables, feats)
    assert max_diff(ours, pre) < tol(pre)
    maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, indices=[0, 1], intermediates_only=True))
    mine = model.apply(variables, x, indices=[0, 1], intermediates_only=True, method=model.forward_intermediates)
    for a, b in zip(mine, maps):
        assert a.shape == tuple(b.shape) and max_diff(a, b.numpy()) < tol(b.numpy())


def test_attention_maps_carry_the_relative_position_bias():
    """`vitjax attention` reads the sown weights: softmax(q·k/√d + bias), timm's, not uniform by accident."""
    tm = timm_model('beit_base_patch16_224', img_size=64, depth=1, embed_dim=192, num_heads=3)
    model, variables = port(tm)
    x = images(model, batch=1)
    _, state = model.apply(variables, x, mutable=['intermediates'])
    ours = np.asarray(state['intermediates']['blocks_0']['attn']['attn'][0])
    assert ours.shape == (1, 3, 17, 17) and max_diff(ours, timm_attention_weights(tm, x)) < 1e-6


@pytest.mark.slow
def test_beit_at_another_size_resizes_its_tables_as_timm(tmp_path):
    """--img-size 160x192 from 224: each block's table is resized on its relative-offset grid (class-token rows
    kept) and the parity reference is timm's own checkpoint_filter_fn at that size."""
    import vitjax
    name = 'beit_base_patch16_224'
    src = random_init.save(random_init.create(name, seed=3, **SMALL), tmp_path / 'm.safetensors')
    args = [a for k, v in SMALL.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, '--img-size', '160x192',
                         '--num-classes', '5', '--out', str(tmp_path / 'out'), '--tolerance', str(TOLERANCE)]) == 0
    model, variables = vitjax.load(tmp_path / 'out')
    assert model.grid_size == (10, 12) and model.num_classes == 5
    table = variables['params']['blocks_0']['attn']['rel_pos']['relative_position_bias_table']
    assert table.shape == (19 * 23 + 3, 3)
    orig = load_file(str(src))['blocks.0.attn.relative_position_bias_table']
    np.testing.assert_array_equal(np.asarray(table)[-3:], orig[-3:])


@pytest.mark.zoo
@pytest.mark.slow
def test_beit_full_size(tmp_path):
    model = full_size_matches_registry(tmp_path, 'beitv2_base_patch16_224', TOLERANCE)
    assert model.depth == 12 and model.embed_dim == 768


@pytest.mark.slow
def test_scan_blocks_and_remat_match_the_unrolled_model():
    """scan_blocks (the per-block tables stacked with the blocks) and grad_checkpointing: timm's logits and the
    unrolled model's gradients."""
    tm = timm_model('beit_base_patch16_224', img_size=(64, 48), depth=3, embed_dim=192, num_heads=3)
    model, variables = port(tm)
    x = images(model)
    check_scan_and_remat(model, variables, x, run_timm(tm, x).numpy(), TOLERANCE)


def test_shared_table_and_unsupported_options():
    """BEiT's one table for all blocks (use_shared_rel_pos_bias, no pretrained tag uses it) gives timm's logits;
    both kinds at once is an error naming it, and so is a dynamic size."""
    from vitjax.weights.engine import UnsupportedModel
    from porting.sources import source_of
    tm = timm_model('beit_base_patch16_224', img_size=64, use_rel_pos_bias=False, use_shared_rel_pos_bias=True,
                    **SMALL)
    model, variables = port(tm)
    assert model.shared_rel_pos and 'rel_pos' in variables['params']
    x = images(model)
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < TOLERANCE * max(1, np.abs(ref).max())
    tm = timm_model('beit_base_patch16_224', depth=1, use_shared_rel_pos_bias=True)
    with pytest.raises(UnsupportedModel, match='both per-block and shared'):
        source_of(tm, 'timm').torch_config(tm)
    from vitjax.models.beit import Beit
    with pytest.raises(ValueError, match='dynamic_img_size is not supported'):
        Beit(depth=1, dynamic_img_size=True).init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_beit(tmp_path):
    """`--config.init` a converted BEiT: trained on the digits at 32x32 (its tables resized to the 2x2 grid),
    then `vitjax features` / `attention` and export back to timm with parity."""
    fine_tune_family(tmp_path, 'beit_base_patch16_224', SMALL, 32)
