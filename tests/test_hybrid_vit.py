"""The ViT paper's hybrids (timm's vision_transformer_hybrid: a ResNetV2 backbone under the patch embedding)
against timm itself with perturbed random weights: every pretrained architecture through the converter CLI and
back bit for bit, another input size, the forward API, and fine-tuning through train.py. Reduced transformer
depth; the backbones are whole."""
import json

import jax
import numpy as np
import pytest

from conftest import (convert_and_export, fine_tune_family, full_size_matches_registry, images, max_diff, port,
                      run_timm, timm_model)
from porting import convert, random_init

NAMES = {  # name: the backbone's blocks per stage
    'vit_tiny_r_s16_p8_224': (), 'vit_tiny_r_s16_p8_384': (),
    'vit_small_r26_s32_224': (2, 2, 2, 2), 'vit_small_r26_s32_384': (2, 2, 2, 2),
    'vit_base_r50_s16_224': (3, 4, 9), 'vit_base_r50_s16_384': (3, 4, 9),
    'vit_large_r50_s32_224': (3, 4, 6, 3), 'vit_large_r50_s32_384': (3, 4, 6, 3),
}
# The 1e-5 goal, but 1e-4 (its bound) for the 16-block R50 of the large hybrids: there timm's own f32
# backbone is ~6e-5 (relative) from its float64 result, and so is ours, the two errors unrelated.
TOLERANCE = {n: 1e-4 if 'large_r50' in n else 1e-5 for n in NAMES}


def test_every_pretrained_hybrid_is_in_the_zoo_or_named():
    import timm
    z = json.load(open('vitjax/zoo.json'))
    pretrained = sorted({n.split('.')[0] for n in timm.list_models(module='vision_transformer_hybrid',
                                                                   pretrained=True)})
    assert pretrained == sorted([*NAMES, 'vit_base_mci_224'])
    assert all(z['architectures'][n]['family'] == 'hybrid_vit' and
               tuple(z['architectures'][n]['config']['backbone_layers']) == NAMES[n] for n in NAMES)
    assert 'MobileCLIP' in z['left_out']['vit_base_mci_224']  # its ConvStem is another backbone


@pytest.mark.slow
@pytest.mark.parametrize('name', ['vit_tiny_r_s16_p8_384', 'vit_small_r26_s32_224', 'vit_large_r50_s32_224'])
def test_hybrid_converts_exports_and_loads(tmp_path, name):
    """convert (parity) -> load -> export -> the same tensors, bit for bit; the backbone read as timm builds it:
    the stem only, the R26 and the 4-stage R50 (R50 3-stage: the full-size test; tests/hub_zoo.py does every
    architecture at depth 1)."""
    saved, model, variables = convert_and_export(tmp_path, name, 'hybrid_vit', dict(depth=1), TOLERANCE[name])
    assert tuple(saved['backbone_layers']) == NAMES[name] and type(model).__name__ == 'VisionTransformerHybrid'
    tm = timm_model(name, depth=1)
    assert model.grid_size == tuple(tm.patch_embed.grid_size)
    assert variables['params']['pos_embed'].shape[1] == 1 + model.grid_size[0] * model.grid_size[1]


def test_forward_api_matches_timm():
    """Logits, forward_features and forward_intermediates (NCHW on the hybrid's own token grid) of the stem-only
    hybrid at a non-square size."""
    tm = timm_model('vit_tiny_r_s16_p8_224', img_size=(96, 128), depth=2)
    model, variables = port(tm)
    assert model.grid_size == (3, 4)
    x = images(model)
    tol = lambda ref: 1e-5 * max(1, float(np.abs(ref).max()))
    ref = run_timm(tm, x).numpy()
    assert max_diff(jax.jit(model.apply)(variables, x), ref) < tol(ref)
    maps = run_timm(tm, x, lambda m, t: m.forward_intermediates(t, indices=2, intermediates_only=True))
    mine = model.apply(variables, x, indices=2, intermediates_only=True, method=model.forward_intermediates)
    for a, b in zip(mine, maps):
        assert a.shape == tuple(b.shape) == (2, 192, 3, 4) and max_diff(a, b.numpy()) < tol(b.numpy())


@pytest.mark.slow
def test_hybrid_at_another_size(tmp_path):
    """--img-size 160x192 from 224 (R26, stride 32): the position grid 7x7 -> 5x6 as timm resamples it."""
    import vitjax
    name = 'vit_small_r26_s32_224'
    src = random_init.save(random_init.create(name, seed=3, depth=1), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(src), '--model-arg', 'depth=1', '--img-size', '160x192',
                         '--out', str(tmp_path / 'out'), '--tolerance', '1e-5']) == 0
    model, variables = vitjax.load(tmp_path / 'out')
    assert model.grid_size == (5, 6) and variables['params']['pos_embed'].shape[1] == 31


@pytest.mark.zoo
@pytest.mark.slow
def test_hybrid_full_size(tmp_path):
    model = full_size_matches_registry(tmp_path, 'vit_base_r50_s16_224', 1e-5)
    assert model.depth == 12 and model.backbone_layers == (3, 4, 9)


def test_bad_hybrid_configs_are_named():
    import jax.numpy as jnp
    from vitjax.models.hybrid import VisionTransformerHybrid as M
    for kwargs, msg in [(dict(backbone_layers=(1, 1, 1, 1, 1)), 'at most 4 stages'),
                        (dict(backbone_layers=(2, 0)), '>= 1 blocks'),
                        (dict(dynamic_img_size=True), 'the size they are built for')]:
        with pytest.raises(ValueError, match=msg):
            M(depth=1, **kwargs).init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))


@pytest.mark.slow
def test_train_py_fine_tunes_hybrid(tmp_path):
    """`--config.init` a converted hybrid (the stem-only one): trained on the digits at 64x64 (its 7x7 position
    grid resampled to 2x2), then `vitjax features` / `attention` and export back to timm with parity. Three epochs:
    the stem's 7x7 convolution at 64 px is most of a step, and the loss falls by a third in three."""
    fine_tune_family(tmp_path, 'vit_tiny_r_s16_p8_224', dict(depth=2), 64, epochs=3)
