"""DeiT-tiny fine-tuned on CIFAR-10 from ported weights, as the tutorials do: the head first, then everything.

    python train.py --config configs/cifar10_deit_tiny.py:head --config.init=out/deit_tiny --workdir runs/c10_head
    python train.py --config configs/cifar10_deit_tiny.py:full --config.init=runs/c10_head/model

32x32 images are upsampled to the model's 224 (the tutorial's choice; `--config.image_size=N` trains at
another size, with position embeddings resampled, not truncated). Needs the cifar10 tfds data. Sized for one
16 GB GPU: the full fine-tune's step at batch 128 needs 7.4 GiB (`--compile_only`, XLA:CPU's analysis).
"""
from vitjax.train.config import default_config


def get_config(stage: str = 'full'):
    if stage not in ('head', 'full'):
        raise ValueError(f"stage must be 'head' or 'full', got {stage!r}")
    c = default_config()
    c.name = f'cifar10_deit_tiny_{stage}'
    c.model = 'deit_tiny_patch16_224'
    c.dataset = 'cifar10'
    c.train_split, c.eval_split, c.test_split = 'train[:90%]', 'train[90%:]', 'test'
    c.crop, c.crop_scale, c.flip = 'random_resized_crop', (0.5, 1.0), True
    c.batch_size = 128
    c.num_epochs = 1.0 if stage == 'head' else 3.0
    c.warmup_steps = 50 if stage == 'head' else 200
    c.lr = 1e-3 if stage == 'head' else 1e-4
    c.weight_decay = 0.0 if stage == 'head' else 0.05
    c.trainable = '^head' if stage == 'head' else ''
    c.drop_path_rate = 0.0 if stage == 'head' else 0.1
    c.label_smoothing = 0.1
    c.eval_every, c.checkpoint_every, c.log_every = 500, 500, 50
    return c
