"""The one training config: every hyperparameter with its default (ml_collections, typed by its defaults).

Preset files in `configs/` start from `default_config()` and change what they need; the command line
overrides any field with `--config.field=value` (the vit_jax / big_vision / Flax-examples convention).
"""
from __future__ import annotations

import ml_collections


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.name = 'default'

    # Model: a registry name plus VisionTransformer overrides; `init` is a vitjax model directory to start from.
    c.model = 'vit_tiny_patch16_224'
    c.model_overrides = ml_collections.ConfigDict()
    c.init = ''
    c.image_size = 0  # 0: the model's own input size
    c.dtype = 'float32'  # compute dtype; params and optimizer state stay float32
    c.grad_checkpointing = False  # recompute each block in the backward (less memory, ~1/3 more compute)
    c.scan_blocks = False  # ViT: compile one block, scanned over depth (faster compile; params stacked)

    # Data: a tfds name, `vitjax_digits`, or a folder with one subfolder per class.
    c.dataset = 'vitjax_digits'
    c.data_dir = ml_collections.config_dict.placeholder(str)
    c.train_split = 'train'
    c.eval_split = 'test'
    c.test_split = 'test'
    c.crop = 'random_resized_crop'  # or 'resize'
    c.crop_scale = (0.08, 1.0)
    c.flip = True
    c.eval_crop_pct = 0.0  # 0: the model's pretrained_cfg.crop_pct
    c.shuffle_buffer = 10_000
    c.batch_size = 128  # global, over all devices and processes

    # Schedule (steps; total_steps 0 derives it from num_epochs).
    c.num_epochs = 10.0
    c.total_steps = 0
    c.warmup_steps = 100
    c.decay = 'cosine'  # 'cosine' | 'linear' | 'constant'
    c.end_lr = 0.0

    # Optimizer: AdamW with PyTorch semantics (decoupled decay multiplied by the learning rate).
    c.lr = 1e-3
    c.b1 = 0.9
    c.b2 = 0.999
    c.eps = 1e-8
    c.weight_decay = 0.1
    # Parameters whose '/'-joined path matches one of these regexes get no weight decay.
    c.no_decay = (r'(^|/)bias$', r'(^|/)scale$', r'^pos_embed$', r'^(cls|reg|dist)_token$', r'(^|/)gamma$',
                  r'(^|/)relative_position_bias_table$')
    c.clip_norm = 1.0  # global-norm clipping; 0 disables
    c.accum_steps = 1  # gradient accumulation over k micro-batches
    c.label_smoothing = 0.0
    c.trainable = ''  # regex over param paths; '' trains everything, '^head' is a linear probe
    c.head_lr = ml_collections.config_dict.placeholder(float)  # a separate lr for head/head_dist

    # Regularisation.
    c.drop_rate = 0.0
    c.drop_path_rate = 0.0

    # Bookkeeping.
    c.seed = 0
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.nan_policy = 'stop'  # 'stop' | 'skip'
    c.distributed = False  # call jax.distributed.initialize() (multi-host)
    return c
