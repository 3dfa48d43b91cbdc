"""The ViT paper's pre-training recipe (Dosovitskiy et al. 2020, sec. 4.1 / app. B.1) for ViT-B/16 on ImageNet.

Adam β1 0.9, β2 0.999, batch 4096, weight decay 0.1 (PyTorch/optax AdamW: multiplied by the lr), 10k warmup
steps then linear decay, global-norm clipping at 1.0, dropout 0.1, 300 epochs. For a TPU/GPU host with the
imagenet2012 tfds data prepared:  python train.py --config configs/imagenet_vit_b16.py

Sized for 8 x 40 GB GPUs (A100 40GB): 512 images per device per step, in 4 micro-batches of 128
(accum_steps=4; the same gradient as one batch of 512). XLA's analysis of the compiled step, 8 simulated
devices (`XLA_FLAGS=--xla_force_host_platform_device_count=8 python train.py --config
configs/imagenet_vit_b16.py --compile_only --config.device_memory_gb=40`): 26.7 GiB per device; 100.7 GiB
without accumulation. That analysis is XLA:CPU's (GPU fusion differs, and XLA:CPU's figure does not shrink
with grad_checkpointing), so take it as an estimate; on the GPUs the check runs against their real memory.
"""
from vitjax.train.config import default_config


def get_config():
    c = default_config()
    c.name = 'imagenet_vit_b16'
    c.model = 'vit_base_patch16_224'
    c.dataset = 'imagenet2012'
    c.train_split, c.eval_split, c.test_split = 'train[:99%]', 'train[99%:]', 'validation'
    c.batch_size = 4096
    c.accum_steps = 4
    c.num_epochs = 300.0
    c.warmup_steps = 10_000
    c.decay = 'linear'
    c.lr = 3e-3
    c.end_lr = 0.0
    c.weight_decay = 0.1
    c.clip_norm = 1.0
    c.drop_rate = 0.1
    c.dtype = 'bfloat16'
    c.shuffle_buffer = 250_000
    c.log_every, c.eval_every, c.checkpoint_every = 100, 2500, 2500
    return c
