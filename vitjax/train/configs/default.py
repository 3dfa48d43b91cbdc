"""The embedded default: a small ViT from scratch on the 1,797 scikit-learn digits (8x8, 10 classes).

Runs offline on 2 CPU cores in a few minutes: `python train.py` (or `make train`). Sized for a CPU: the train
step needs 0.13 GiB per device (`python train.py --compile_only`, XLA:CPU's analysis).
"""
from vitjax.train.config import default_config


def get_config():
    c = default_config()
    c.name = 'digits_vit'
    c.dataset = 'vitjax_digits'
    c.train_split, c.eval_split, c.test_split = 'train', 'test', 'test'
    # A tiny ViT on the 8x8 digits upsampled to 16x16: 16 tokens of 4x4 patches.
    c.model = 'vit_tiny_patch16_224'
    c.model_overrides = dict(img_size=16, patch_size=4, embed_dim=96, depth=6, num_heads=4)
    # Inception crops at timm's (0.08, 1) scale destroy 8x8 digits; at (0.85, 1) they are one-pixel shifts and
    # slight zooms, which make the recipe less sensitive to its seed (docs/changelog.md, 2026-11-30).
    c.crop = 'random_resized_crop'
    c.crop_scale = (0.85, 1.0)
    c.flip = False  # digits are not mirror-symmetric
    c.eval_crop_pct = 1.0  # the whole 8x8 digit; a center crop would cut strokes
    c.batch_size = 128
    c.num_epochs = 55.0
    c.warmup_steps = 100
    c.lr = 2e-3
    c.weight_decay = 0.1
    c.label_smoothing = 0.1
    c.log_every = 50
    c.eval_every = 200
    c.checkpoint_every = 400
    return c
