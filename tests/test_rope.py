"""vitjax.models.rope against the RoPE modules timm's Eva builds (timm/layers/pos_embed_sincos.py).

timm's side is the real `Eva.__init__` and `Eva._pos_embed` of each model, so the rope kwargs Eva derives from
its model args are exercised, not restated here; only the transformer blocks are stubbed out (they play no
part in the position embedding and would cost most of the construction time).
"""
import torch  # noqa: I001  torch and timm before anything that imports tensorflow
import timm
from timm.layers.pos_embed_sincos import apply_rot_embed_cat as timm_apply, create_rope_embed
from timm.models import eva

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from unittest import mock

from conftest import max_diff
from vitjax.models.rope import ROPE_TYPES, RotaryEmbedding, apply_rot_embed_cat

jax.config.update('jax_default_matmul_precision', 'highest')
TOL = 1e-5


class _NoBlock(torch.nn.Module):
    """Just what Eva.fix_init_weight touches."""

    def __init__(self, **_):
        super().__init__()
        self.attn, self.mlp = torch.nn.Module(), torch.nn.Module()
        self.attn.proj, self.mlp.fc2 = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)


def timm_eva(name, **kwargs):
    torch.manual_seed(0)
    with mock.patch.object(eva, 'EvaBlock', _NoBlock):
        return timm.create_model(name, **kwargs).eval()


def timm_rope(model, grid):
    """The rotary embedding `Eva._pos_embed` hands to the blocks for a (H, W) patch grid."""
    c = model.embed_dim
    x = torch.zeros(1, *grid, c) if model.dynamic_img_size else torch.zeros(1, grid[0] * grid[1], c)
    with torch.no_grad():
        return model._pos_embed(x)[1].numpy()


# (timm model, our module's config as the model function's args give it, the model's own grid)
CASES = {
    'eva02_tiny_patch14_224': (dict(kind='cat', dim=192, num_heads=3, ref_feat_shape=(16, 16)), (16, 16)),
    'vit_base_patch16_rope_224': (dict(kind='cat', dim=768, num_heads=12, grid_indexing='xy', temperature=100.),
                                  (14, 14)),
    'vit_pe_core_tiny_patch16_384': (dict(kind='cat', dim=192, num_heads=3, grid_offset=1., grid_indexing='xy',
                                          ref_feat_shape=(24, 24)), (24, 24)),
    'vit_base_patch16_rope_mixed_224': (dict(kind='mixed', dim=768, num_heads=12, depth=12, temperature=10.,
                                             grid_indexing='xy'), (14, 14)),
    'vit_base_patch16_dinov3': (dict(kind='dinov3', dim=768, num_heads=12, temperature=100., rotate_half=True),
                                (16, 16)),
}


@pytest.mark.parametrize('name', CASES)
def test_rope_matches_timm(name):
    cfg, own = CASES[name]
    fixed = timm_eva(name, dynamic_img_size=False)  # embedding cached at feat_shape, rebuilt by set_input_size
    dyn = timm_eva(name, dynamic_img_size=True)     # embedding rebuilt for every input's grid
    assert tuple(fixed.patch_embed.grid_size) == own
    ours = RotaryEmbedding(**cfg)
    variables = {}
    if cfg['kind'] == 'mixed':
        # Perturbed, so that a wrong axis or block / head mapping of the learned frequencies cannot pass.
        g = torch.Generator().manual_seed(1)
        freqs = fixed.rope.freqs.detach() + 0.02 * torch.randn(fixed.rope.freqs.shape, generator=g)
        for m in (fixed, dyn):
            m.rope.freqs.data.copy_(freqs)
        init = jax.eval_shape(lambda k: ours.init(k, own), jax.random.key(0))['params']['freqs']
        assert init.shape == freqs.shape == (2, 12, 12, 32)
        variables = {'params': {'freqs': jnp.asarray(freqs.numpy())}}
    diffs = {}
    for grid in (own, (10, 7), (7, 31)):
        if grid != own:
            fixed.set_input_size(img_size=tuple(s * p for s, p in zip(grid, fixed.patch_embed.patch_size)))
        refs = timm_rope(fixed, grid), timm_rope(dyn, grid)
        np.testing.assert_array_equal(refs[0], refs[1])
        out = np.asarray(ours.apply(variables, grid))
        assert out.dtype == np.float32
        diffs[grid] = max_diff(out, refs[0])
        assert diffs[grid] <= TOL, (grid, diffs[grid])

        # The rotation itself: random q (B, heads, N, head_dim), one block's embedding for 'mixed'.
        heads, head_dim = cfg['num_heads'], cfg['dim'] // cfg['num_heads']
        q = np.random.default_rng(0).standard_normal((2, heads, grid[0] * grid[1], head_dim)).astype(np.float32)
        emb_t, emb_j = (refs[0][3], out[3]) if cfg['kind'] == 'mixed' else (refs[0], out)
        for half in (False, True):
            ref = timm_apply(torch.from_numpy(q), torch.from_numpy(emb_t), half=half).numpy()
            got = np.asarray(apply_rot_embed_cat(jnp.asarray(q), jnp.asarray(emb_j), half))
            diffs[grid, half] = max_diff(got, ref)
            assert diffs[grid, half] <= TOL, (grid, half, diffs[grid, half])
    print(name, {k: f'{v:.1e}' for k, v in diffs.items()})


@pytest.mark.parametrize('kind, kwargs', [
    ('cat', dict(grid_offset=0.5, rotate_half=True, ref_feat_shape=(9, 5), temperature=50.)),
    ('cat', dict(grid_indexing='xy', ref_feat_shape=(4, 11))),
    ('dinov3', dict(grid_offset=0.5, grid_indexing='xy', rotate_half=False, temperature=1000.)),
    ('dinov3', dict(rotate_half=True)),
    ('mixed', dict(grid_indexing='ij', temperature=100.)),
])
def test_options_match_timm(kind, kwargs):
    """Option combinations no model above uses, against `create_rope_embed` called as Eva calls it."""
    # Eva passes temperature, grid_indexing and rotate_half always (its defaults differ from the classes')
    eva_kwargs = {'temperature': 10000., 'grid_indexing': 'ij', 'rotate_half': False, **kwargs,
                  **{'cat': {'in_pixels': False}, 'mixed': {'depth': 3}, 'dinov3': {}}[kind]}
    ref_mod = create_rope_embed(rope_type=kind, dim=96, num_heads=2, **eva_kwargs)
    ours = RotaryEmbedding(kind=kind, dim=96, num_heads=2, depth=3, **kwargs)
    variables = {'params': {'freqs': jnp.asarray(ref_mod.freqs.detach().numpy())}} if kind == 'mixed' else {}
    for grid in ((6, 13), (13, 6)):
        with torch.no_grad():
            ref = ref_mod.get_embed(shape=grid).numpy()
        d = max_diff(ours.apply(variables, grid), ref)
        print(kind, kwargs, grid, f'{d:.1e}')
        assert d <= TOL


def test_apply_keeps_dtype():
    q = jnp.ones((1, 2, 6, 8), jnp.bfloat16)
    emb = RotaryEmbedding(kind='cat', dim=16, num_heads=2).apply({}, (2, 3))
    assert emb.shape == (6, 16) and apply_rot_embed_cat(q, emb).dtype == jnp.bfloat16


@pytest.mark.parametrize('kind', ROPE_TYPES)
def test_builds_under_jit(kind):
    m = RotaryEmbedding(kind=kind, dim=64, num_heads=4, depth=2, temperature=10.)
    variables = jax.jit(lambda rng: m.init(rng, (3, 5)))(jax.random.key(0))
    out = jax.jit(lambda v: m.apply(v, (5, 3)))(variables)
    np.testing.assert_allclose(out, m.apply(variables, (5, 3)), atol=1e-6)
    assert out.shape == ((2, 4, 15, 32) if kind == 'mixed' else (15, 32))
    if kind == 'mixed':
        assert variables['params']['freqs'].shape == (2, 2, 4, 8)
    else:
        assert not variables


@pytest.mark.parametrize('kwargs, match', [
    (dict(kind='cat', shift_coords=1.), 'augmentation'),
    (dict(kind='dinov3', jitter_coords=2.), 'augmentation'),
    (dict(kind='mixed', rescale_coords=2.), 'augmentation'),
    (dict(kind='mixed', rotate_half=True), 'rotate_half'),
    (dict(kind='axial'), 'kind'),
    (dict(kind='cat', num_heads=5), 'head_dim'),
    (dict(kind='cat', grid_indexing='yx'), 'grid_indexing'),
])
def test_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RotaryEmbedding(**{'dim': 64, 'num_heads': 4, **kwargs}).init(jax.random.key(0), (2, 2))
