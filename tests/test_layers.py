import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed as timm_resample

from conftest import max_diff
from vitjax.models.layers import feature_take_indices, resample_abs_pos_embed


@pytest.mark.parametrize('old, new, prefix', [
    ((14, 14), (24, 24), 1),   # 224 -> 384 at patch 16
    ((24, 24), (14, 14), 1),   # downsampling: the antialiasing path
    ((14, 14), (10, 20), 2),   # non-square grid, two prefix tokens (DeiT distilled)
    ((16, 12), (7, 31), 0),    # non-square source, no prefix (no_embed_class)
])
def test_resample_matches_timm(old, new, prefix):
    rng = np.random.default_rng(0)
    pos = rng.standard_normal((1, prefix + old[0] * old[1], 48)).astype(np.float32)
    ref = timm_resample(torch.from_numpy(pos), new_size=new, old_size=old, num_prefix_tokens=prefix).numpy()
    out = np.asarray(resample_abs_pos_embed(pos, new, old, prefix))
    assert out.shape == ref.shape == (1, prefix + new[0] * new[1], 48)
    assert max_diff(out, ref) <= 1e-5
    np.testing.assert_array_equal(out[:, :prefix], pos[:, :prefix])


def test_resample_errors():
    pos = np.zeros((1, 1 + 15, 8), np.float32)
    with pytest.raises(ValueError, match='square grid'):
        resample_abs_pos_embed(pos, (4, 4))
    with pytest.raises(ValueError, match='not 3x4'):
        resample_abs_pos_embed(pos, (4, 4), (3, 4))


def test_feature_take_indices():
    assert feature_take_indices(12) == list(range(12))
    assert feature_take_indices(12, 3) == [9, 10, 11]
    assert feature_take_indices(12, [0, -1]) == [0, 11]
    with pytest.raises(ValueError):
        feature_take_indices(12, 13)
    with pytest.raises(ValueError):
        feature_take_indices(12, [12])


def test_layer_norm_value_and_gradient_match_torch():
    # The closed-form backward replaces autodiff: check it against PyTorch's on large, offset activations.
    import jax
    import jax.numpy as jnp
    from vitjax.models.layers import LayerNorm
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 5, 64)) * 30 + 7).astype(np.float32)
    scale, bias = (rng.standard_normal(64) * 0.5 + 1.5).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    ct = rng.standard_normal(x.shape).astype(np.float32)
    ln = LayerNorm(epsilon=1e-6)
    params = {'params': {'scale': jnp.asarray(scale), 'bias': jnp.asarray(bias)}}
    y, vjp = jax.vjp(lambda p, x: ln.apply(p, x), params, jnp.asarray(x))
    dp, dx = vjp(jnp.asarray(ct))
    xt, st, bt = (torch.tensor(a, requires_grad=True) for a in (x, scale, bias))
    yt = torch.nn.functional.layer_norm(xt, (64,), st, bt, 1e-6)
    yt.backward(torch.from_numpy(ct))
    assert max_diff(y, yt.detach().numpy()) <= 1e-5
    assert max_diff(dx, xt.grad.numpy()) <= 1e-5 * np.abs(xt.grad.numpy()).max()
    assert max_diff(dp['params']['scale'], st.grad.numpy()) <= 1e-4
    assert max_diff(dp['params']['bias'], bt.grad.numpy()) <= 1e-4


@pytest.mark.parametrize('rel_pos_type', ['', 'bias', 'mlp'])
def test_attention_fused_kernel_path_matches_explicit(monkeypatch, rel_pos_type):
    # The GPU/TPU branch (jax.nn.dot_product_attention) is chosen by backend; run both here on the CPU.
    import jax
    import jax.numpy as jnp
    from vitjax.models import layers
    attn = layers.Attention(layers.AttnCfg(num_heads=4, rel_pos_type=rel_pos_type, grid_size=(2, 4), num_prefix_tokens=1))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 9, 32)), jnp.float32)
    v = attn.init(jax.random.PRNGKey(0), x)
    v = jax.tree_util.tree_map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(1), p.shape), v)
    explicit = attn.apply(v, x)
    monkeypatch.setattr(layers.jax, 'default_backend', lambda: 'gpu')
    fused = attn.apply(v, x)
    assert max_diff(explicit, fused) <= 1e-5
    assert float(jnp.abs(explicit).mean()) > 1e-2
