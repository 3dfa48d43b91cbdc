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
