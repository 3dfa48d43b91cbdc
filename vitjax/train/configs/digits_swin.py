"""A small Swin Transformer from scratch on the embedded digits: the same job as the default, windowed attention.

    python train.py --config configs/digits_swin.py

Sized for a CPU: the train step needs 0.13 GiB per device (`--compile_only`, XLA:CPU's analysis).
"""
from vitjax.train.configs import default


def get_config():
    c = default.get_config()
    c.name = 'digits_swin'
    c.model = 'swin_tiny_patch4_window7_224'
    # 16x16 input, 2x2 patches: an 8x8 map in stage 0 (two 4x4 windows a side, shifted in every other
    # block), 4x4 after patch merging, where the window covers the whole map and stops shifting.
    c.model_overrides = dict(img_size=16, patch_size=2, embed_dim=48, depths=(2, 2), num_heads=(2, 4),
                             window_size=4)
    return c
