"""timm's NaFlexViT against timm itself (perturbed random weights): images of any size, NaFlex batches that mix
aspect ratios with padding, the converter CLI both ways, and fine-tuning through train.py."""
import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import fine_tune_family, max_diff, port, run_timm, timm_model
from porting import convert, export, random_init
from vitjax.models.naflex import patchify, resize_weights

NAMES = ['naflexvit_base_patch16_gap', 'naflexvit_base_patch16_siglip']
SMALL = dict(depth=2, embed_dim=192, num_heads=3)
TOLERANCE = 1e-5


def _images(shapes, seed=0):
    return [np.random.default_rng(seed + i).standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)]


@pytest.mark.parametrize('name', NAMES)
def test_naflex_batch_with_mixed_aspect_ratios(name):
    """One padded batch of a wide, a tall and a square image (and one of a single patch row): timm's logits,
    and each sample's logits the same as when it is alone in the batch (padding changes nothing)."""
    tm = timm_model(name, **SMALL)
    model, variables = port(tm)
    run = jax.jit(lambda v, p, c, m: model.apply(v, p, c, m, method='forward_naflex'))
    ims = _images([(160, 256, 3), (256, 96, 3), (128, 128, 3), (16, 208, 3)])
    batch = patchify(ims, 16)
    with torch.no_grad():
        ref = tm({'patches': torch.from_numpy(batch[0]), 'patch_coord': torch.from_numpy(batch[1]).long(),
                  'patch_valid': torch.from_numpy(batch[2])}).numpy()
    ours = np.asarray(run(variables, *batch))
    assert max_diff(ours, ref) < TOLERANCE * max(1, np.abs(ref).max())
    assert batch[2].sum(1).tolist() == [160, 96, 64, 13] and batch[0].shape[1] == 160
    for i, im in enumerate(ims):
        alone = np.asarray(run(variables, *patchify([im], 16, max_patches=192)))
        assert max_diff(alone[0], ours[i]) < 1e-5


@pytest.mark.parametrize('name', NAMES)
def test_images_at_any_size(name):
    tm = timm_model(name, **SMALL)
    model, variables = port(tm)
    run = jax.jit(model.apply)
    for size in ((384, 384), (256, 160), (96, 272)):
        x = np.random.default_rng(1).standard_normal((2, *size, 3)).astype(np.float32)
        ref = run_timm(tm, x).numpy()
        assert max_diff(run(variables, x), ref) < TOLERANCE * max(1, np.abs(ref).max())


@pytest.mark.slow
def test_resize_weights_are_pytorchs():
    """The traced-size position-grid resize equals F.interpolate(antialias=True) down, up and at the same size."""
    grid = np.random.default_rng(0).standard_normal((1, 5, 16, 16)).astype(np.float32)
    for mode in ('bicubic', 'bilinear'):
        for out in (16, 7, 23, 1):
            ref = torch.nn.functional.interpolate(torch.from_numpy(grid), size=(out, out), mode=mode,
                                                  antialias=True, align_corners=False).numpy()
            w = np.asarray(resize_weights(jax.numpy.arange(out), jax.numpy.asarray(out), 16, mode))
            ours = np.einsum('yi,xj,bcij->bcyx', w, w, grid)
            assert max_diff(ours, ref) < 1e-5, (mode, out)


@pytest.mark.slow
@pytest.mark.parametrize('name', NAMES)
def test_naflex_converts_and_exports_bit_exact(tmp_path, name):
    import vitjax
    src = random_init.save(random_init.create(name, seed=2, depth=2), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(src), '--model-arg', 'depth=2',
                         '--out', str(tmp_path / 'out'), '--tolerance', str(TOLERANCE)]) == 0
    model, _ = vitjax.load(tmp_path / 'out')
    assert type(model).__name__ == 'NaFlexVit' and model.pos_embed_grid == (16, 16)
    assert export.main(['--model', str(tmp_path / 'out'), '--out', str(tmp_path / 'back.safetensors'),
                        '--tolerance', str(TOLERANCE)]) == 0
    a, b = load_file(str(src)), load_file(str(tmp_path / 'back.safetensors'))
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_naflex_converted_at_another_size_and_head(tmp_path):
    """--img-size / --num-classes: the 16x16 grid is kept (timm resizes it in the forward), the head is new."""
    import vitjax
    name = 'naflexvit_base_patch16_siglip'
    src = random_init.save(random_init.create(name, seed=2, **SMALL), tmp_path / 'm.safetensors')
    args = [a for k, v in SMALL.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, '--img-size', '160x224',
                         '--num-classes', '7', '--out', str(tmp_path / 'out')]) == 0
    model, variables = vitjax.load(tmp_path / 'out')
    assert model.img_size == (160, 224) and model.num_classes == 7 and variables['params']['pos_embed'].shape[1] == 256


@pytest.mark.zoo
@pytest.mark.slow
def test_naflex_full_size(tmp_path):
    name = 'naflexvit_base_patch16_gap'
    src = random_init.save(random_init.create(name, seed=3), tmp_path / 'm.safetensors')
    assert convert.main(['--model', name, '--checkpoint', str(src), '--out', str(tmp_path / 'out'),
                         '--tolerance', str(TOLERANCE)]) == 0


@pytest.mark.slow
def test_train_py_fine_tunes_naflex(tmp_path):
    """`--config.init` a converted NaFlexViT: trained on the digits at 32x32 (its 16x16 grid resized to 2x2)."""
    fine_tune_family(tmp_path, 'naflexvit_base_patch16_gap', SMALL, 32)


def test_patchify_pads_as_timm_and_names_what_does_not_fit():
    """Sizes that are no multiple of the patch (one smaller than a patch) are zero-padded on the bottom and right,
    as timm's Patchify does; what cannot be laid out is a ValueError naming the image, the patch and the limit."""
    from timm.data.naflex_dataset import NaFlexCollator
    from timm.data.naflex_transforms import Patchify
    ims = _images([(10, 12, 3), (20, 40, 3), (32, 16, 3)])
    ours = patchify(ims, 16, max_patches=6)
    ref, _ = NaFlexCollator(max_seq_len=6)([(Patchify(16)(torch.from_numpy(im.transpose(2, 0, 1).copy())), 0)
                                            for im in ims])
    for a, k in zip(ours, ('patches', 'patch_coord', 'patch_valid')):
        np.testing.assert_array_equal(a, ref[k].numpy())
    assert ours[2].sum(1).tolist() == [1, 6, 2]
    with pytest.raises(ValueError, match=r'image 1 \(20x40\) makes 6 patches of 16x16, more than max_patches=4'):
        patchify(ims, 16, max_patches=4)
    for bad, msg in (([], 'no images'), ([np.zeros((0, 16, 3))], r'image 0 \(0x16\) is empty'),
                     ([np.zeros((16, 16))], r'image 0: expected \(H, W, C\), got shape \(16, 16\)'),
                     ([ims[0], np.zeros((16, 16, 1))], 'image 1 has 1 channels, image 0 has 3')):
        with pytest.raises(ValueError, match=msg):
            patchify(bad, 16)
