"""ViT-B/16 on Oxford-IIIT Pets with a frozen backbone and an 80/10/10 split of the train split.

    python train.py --config configs/pets_vit_b16.py --config.init=out/vitb

`out/vitb` from `python -m porting.convert --model vit_base_patch16_224.augreg_in21k_ft_in1k --out out/vitb`.
Needs the oxford_iiit_pet tfds data. Sized for any GPU: the head-only step at batch 64 needs 1.2 GiB per device
(`--compile_only`, XLA:CPU's analysis).
"""
from vitjax.train.config import default_config


def get_config():
    c = default_config()
    c.name = 'pets_vit_b16_frozen'
    c.model = 'vit_base_patch16_224'
    c.dataset = 'oxford_iiit_pet'
    c.train_split, c.eval_split, c.test_split = 'train[:80%]', 'train[80%:90%]', 'train[90%:]'
    c.trainable = '^head'  # linear probe: only the new 37-way head learns
    c.batch_size = 64
    c.num_epochs = 5.0
    c.warmup_steps = 50
    c.lr = 1e-3
    c.weight_decay = 0.0
    c.crop_scale = (0.5, 1.0)
    c.eval_every, c.checkpoint_every = 100, 200
    return c
