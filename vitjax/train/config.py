"""The one training config: every hyperparameter with its default (ml_collections, typed by its defaults).

Preset files in `configs/` start from `default_config()` and change what they need; the command line
overrides any field with `--config.field=value` (the vit_jax / big_vision / Flax-examples convention).
"""
from __future__ import annotations

import math
import numbers
import os
import re
from typing import Any

import ml_collections

# model_overrides keys that have a config field of their own: one setting, one place
OWN_FIELD = {'img_size': 'image_size', 'num_classes': None, 'dtype': 'dtype', 'drop_rate': 'drop_rate',
             'drop_path_rate': 'drop_path_rate', 'grad_checkpointing': 'grad_checkpointing',
             'scan_blocks': 'scan_blocks'}


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
    c.shuffle_buffer = 10_000  # examples; each holds its encoded bytes (start-up prints the host memory)
    c.cache_bytes = 4 * 2**30  # per process: a split that decodes to at most this is decoded once and cached
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
                  r'(^|/)relative_position_bias_table$', r'(^|/)[qv]_bias$', r'(^|/)logit_scale$', r'/cpb_mlp_\d+/',
                  r'(^|/)position_embedding_table$')
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
    # Multi-host: call jax.distributed.initialize(), which finds the cluster itself on Cloud TPU, SLURM and
    # Open MPI; elsewhere name it: the coordinator (process 0's host:port), the process count and this process.
    c.distributed = False
    # The split is read as this many shards (0: one per process), each process reading its own; the stream
    # depends on the shard count only, so 1 process with data_shards=N reproduces an N-process run's batches.
    c.data_shards = 0
    c.coordinator_address = ''
    c.num_processes = 0  # 0: auto-detected
    c.process_id = -1  # -1: auto-detected
    # Seconds to wait for every process to join (jax's initialization_timeout): past it jax aborts the process.
    c.distributed_timeout = 300
    # 'pmap': replicated state; 'fsdp': params and Adam moments sharded over all devices (jit + NamedSharding),
    # arrays under fsdp_min_size_mb replicated (vitjax/train/parallel.py)
    c.parallelism = 'pmap'
    # The device memory a run is checked against before its first step (0: what jax reports; CPUs report none):
    # set it to size a run for another accelerator, e.g. 40 for a 40 GB GPU, from any host with --compile_only.
    c.device_memory_gb = 0.0
    c.fsdp_min_size_mb = 4.0
    # --resume refuses a config whose meaning differs from the run's (see RESUME_SAFE); name the fields whose
    # change is intended here, comma-separated ('batch_size,lr'), or 'all'.
    c.allow_changes = ''
    return c


# Each numeric field: (lowest, highest, whether the bounds are inclusive). Every number must also be finite:
# a NaN compares False with everything, so a plain `< 0` check lets it through to the params.
_POS, _NONNEG = (0, math.inf, False), (0, math.inf, True)
RANGES: dict[str, tuple[float, float, bool]] = {
    'lr': _POS, 'head_lr': _POS, 'eps': _POS, 'batch_size': _POS, 'accum_steps': _POS, 'log_every': _POS,
    'eval_every': _POS, 'checkpoint_every': _POS, 'keep_checkpoints': _POS, 'shuffle_buffer': _POS,
    'weight_decay': _NONNEG, 'clip_norm': _NONNEG, 'warmup_steps': _NONNEG, 'end_lr': _NONNEG,
    'total_steps': _NONNEG, 'num_epochs': _NONNEG, 'image_size': _NONNEG, 'seed': _NONNEG,
    'eval_crop_pct': (0, 1, True), 'fsdp_min_size_mb': _NONNEG, 'cache_bytes': _NONNEG, 'data_shards': _NONNEG,
    'device_memory_gb': _NONNEG, 'distributed_timeout': _POS,
}
# Fields whose change does not change what a resumed run computes: everything else is refused by --resume
# unless allow_changes names it.
RESUME_SAFE = ('log_every', 'eval_every', 'checkpoint_every', 'keep_checkpoints', 'nan_policy', 'data_dir',
               'distributed', 'eval_split', 'test_split', 'grad_checkpointing', 'allow_changes', 'name',
               'parallelism', 'fsdp_min_size_mb', 'device_memory_gb', 'coordinator_address', 'num_processes',
               'process_id', 'distributed_timeout')
CHOICES = {'decay': ('cosine', 'linear', 'constant'), 'crop': ('random_resized_crop', 'resize'),
           'dtype': ('float32', 'bfloat16'), 'nan_policy': ('stop', 'skip'), 'parallelism': ('pmap', 'fsdp')}


def _number_problem(key: str, v: Any) -> str | None:
    if v is None and key == 'head_lr':
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return f'{key} must be a number (got {v!r})'
    if not math.isfinite(v):
        return f'{key} must be finite (got {v})'
    lo, hi, inclusive = RANGES[key]
    ok = (lo <= v <= hi) if inclusive else (lo < v <= hi)
    return None if ok else f'{key} must be {">=" if inclusive else ">"} {lo}' + (
        f' and <= {hi}' if hi < math.inf else '') + f' (got {v})'


def validate(c: ml_collections.ConfigDict) -> None:
    """Every problem with the settings at once, before anything is read, compiled or written."""
    errors = [e for key in RANGES if (e := _number_problem(key, c[key]))]
    # b1/b2 = 1 freeze Adam's moments at their zero init (every update 0/0); the rest learn nothing at 1
    for key in ('b1', 'b2', 'label_smoothing', 'drop_rate', 'drop_path_rate'):
        v = c[key]
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0 <= v < 1:
            errors.append(f'{key} must be in [0, 1) (got {v!r})')
    for key, allowed in CHOICES.items():
        if c[key] not in allowed:
            errors.append(f'{key} must be one of {", ".join(map(repr, allowed))} (got {c[key]!r})')
    if errors:  # the checks below assume numbers in range
        raise ValueError('invalid config:\n  ' + '\n  '.join(errors))
    if c.total_steps == 0 and c.num_epochs == 0:
        errors.append('set total_steps or num_epochs')
    if c.total_steps and c.warmup_steps >= c.total_steps:
        errors.append(f'warmup_steps ({c.warmup_steps}) must be < total_steps ({c.total_steps})')
    named = (c.coordinator_address, c.num_processes, c.process_id >= 0)
    if any(named) and not c.distributed:
        errors.append('coordinator_address / num_processes / process_id need --config.distributed=True')
    if any(named) and not all(named):
        errors.append('name the cluster with all three of coordinator_address, num_processes and process_id (or '
                      'none, to auto-detect it)')
    elif c.num_processes and not 0 <= c.process_id < c.num_processes:
        errors.append(f'process_id ({c.process_id}) must be in [0, num_processes={c.num_processes})')
    if c.batch_size % c.accum_steps:
        errors.append(f'accum_steps ({c.accum_steps}) must divide batch_size ({c.batch_size})')
    for key in ('lr', 'head_lr'):  # the schedule decays from the peak to end_lr: above it, the 'decay' rises
        if c[key] is not None and c.end_lr > c[key]:
            errors.append(f'end_lr ({c.end_lr}) must be <= {key} ({c[key]})')
    scale = tuple(c.crop_scale)
    if len(scale) != 2 or not all(isinstance(s, numbers.Real) and math.isfinite(s) for s in scale) or \
            not 0 < scale[0] <= scale[1] <= 1:
        errors.append(f'crop_scale must be (min, max) with 0 < min <= max <= 1 (got {scale})')
    for pattern in (c.trainable, *c.no_decay):
        try:
            re.compile(pattern)
        except re.error as e:
            errors.append(f'not a valid regex ({e}): {pattern!r}')
    try:  # an encoder without a head, an image size the family refuses: told before a workdir is made
        check_model(c, remote=False)
    except ValueError as e:
        errors.append(str(e))
    if errors:
        raise ValueError('invalid config:\n  ' + '\n  '.join(errors))


def planned_model(c, remote: bool = True):
    """(module, timm name) that `trainer.initial_model` starts from, at its stored size and without params: from the
    zoo table for a registry name or a zoo hub name, from a local model directory's config.json; with `remote` also
    from the config.json alone of a hub repo the zoo does not name or of an object-store directory. (None, '')
    when not known so: the load then says what is wrong."""
    import json

    from vitjax import hub, io, loader, registry
    from vitjax.storage import is_url
    try:
        if not c.init:
            return registry.build_model(c.model, **{k: v for k, v in dict(c.model_overrides).items()
                                                    if k not in OWN_FIELD}), c.model
        hub_name = hub.is_hub_name(c.init)
        if hub_name:
            name = c.init[len(hub.PREFIX):] if c.init.startswith(hub.PREFIX) else c.init
            name = name.partition('@')[0].removeprefix('timm/')
            if name.partition('.')[0] in hub.zoo()['architectures']:
                return registry.build_model(name), name
        if (hub_name or is_url(c.init)) and not remote:
            return None, ''
        if hub_name or is_url(c.init):  # a repo the zoo does not name: its config.json alone
            cfg = loader.read_config(c.init)
        else:
            with open(os.path.join(c.init, io.CONFIG_FILE)) as f:
                cfg = json.load(f)
        return io.model_from_config(cfg), str(cfg.get('model_name') or '')
    except (ValueError, TypeError, AttributeError, OSError):
        return None, ''


def _classifiers(model, name: str) -> list[str]:
    """The zoo's classifiers over `model`'s encoder class, of the same size (and tag) as `name`."""
    from vitjax import hub
    from vitjax.models import ARCHITECTURES
    arch, _, tag = name.partition('.')
    stem = arch.removesuffix('_enc')
    found = [a for a, row in hub.zoo()['architectures'].items()
             if getattr(ARCHITECTURES[row['family']], 'encoder_cls', None) is type(model) and a.startswith(stem)
             and (not tag or tag in row['tags'])]
    return [f'{a}.{tag}' if tag else a for a in sorted(found, key=lambda a: (a != stem, a))]


def check_model(c, remote: bool = True) -> None:
    """What train.py cannot train: an encoder without a head (the way out named), an image size the model's
    family refuses. `validate` asks before a workdir exists, `trainer.initial_model` again (`remote` configs too)."""
    from vitjax.models.family import problems
    from vitjax.models.tower import Tower, TowerClassifier
    model, name = planned_model(c, remote)
    if model is None:
        return
    flag = '--config.init' if c.init else '--config.model'
    what = f'{flag}={c.init or c.model}'
    if isinstance(model, Tower) and not isinstance(model, TowerClassifier):
        ways = _classifiers(model, name) if name else []
        raise ValueError(f'{what} is a {type(model).__name__}, an encoder without a head (its output is tokens for '
                         'a language model, not class scores), and train.py fine-tunes classifiers: ' +
                         (f'start from the classifier over the same tower, {flag}={ways[0]}' +
                          (f' (or {", ".join(ways[1:])})' if ways[1:] else '') if ways else
                          'start from a classifier of its family'))
    pool = dict(c.model_overrides).get('global_pool', getattr(model, 'global_pool', None))
    if pool == '':  # timm's logits per token: the loss needs one row per image
        way = (f"load it with a pooling head and save that (vitjax.load('{c.init}', global_pool='avg'), then "
               "vitjax.save)" if c.init else "set model_overrides.global_pool (e.g. 'avg') in a config file")
        raise ValueError(f"{what} has global_pool='', which pools nothing (timm's logits per token), and train.py "
                         f'needs one row of logits per image: {way}')
    size = c.image_size or (None if c.init else dict(c.model_overrides).get('img_size'))
    found = problems(model.clone(img_size=size)) if size else []
    if found:
        raise ValueError(f'{what} at image size {size}: ' + '; '.join(found))
