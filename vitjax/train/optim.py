"""The optimizer: AdamW with PyTorch semantics, warmup + decay, global-norm clipping, parameter groups.

Weight decay is decoupled and multiplied by the learning rate, as in `torch.optim.AdamW` and `optax.adamw`
(p <- p - lr * (adam_update + wd * p)). big_vision's `wd` is *not* lr-scaled: its wd=1e-4 at lr=1e-3 is our
weight_decay=0.1. Clipping sees the raw gradients, as `clip_grad_norm_` before `optimizer.step()` does.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from vitjax.models import BUFFERS

HEAD = ('head', 'head_dist')


def create_schedule(c, total_steps: int, peak: float | None = None) -> optax.Schedule:
    """lr(step) = peak * step / warmup during warmup, then decay to end_lr at total_steps:
    cosine: end + (peak - end) * 0.5 * (1 + cos(pi * t)), linear: end + (peak - end) * (1 - t), where
    t = (step - warmup) / (total_steps - warmup). `step` counts optimizer updates starting at 0."""
    peak = c.lr if peak is None else peak
    warmup = int(c.warmup_steps)
    decay_steps = max(int(total_steps) - warmup, 1)
    if c.decay == 'cosine':
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=c.end_lr / peak if peak else 0.)
    elif c.decay == 'linear':
        decay = optax.linear_schedule(peak, c.end_lr, decay_steps)
    elif c.decay == 'constant':
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f'unknown decay {c.decay!r}')
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0., peak, warmup), decay], [warmup])


def path_mask(params: Any, patterns: Sequence[str]) -> Any:
    """A tree of bools: True where the '/'-joined param path matches one of the regexes."""
    flat = traverse_util.flatten_dict(params, sep='/')
    return traverse_util.unflatten_dict(
        {k: any(re.search(p, k) for p in patterns) for k in flat}, sep='/')


def param_labels(params: Any, c) -> Any:
    """'frozen' | 'head' | 'body' per param: frozen ones (`c.trainable` misses them, or BUFFERS) get no updates
    and no optimizer state."""
    def label(path: str) -> str:
        if (c.trainable and not re.search(c.trainable, path)) or any(re.search(b, path) for b in BUFFERS):
            return 'frozen'
        if c.head_lr is not None and path.split('/')[0] in HEAD:
            return 'head'
        return 'body'
    flat = traverse_util.flatten_dict(params, sep='/')
    return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep='/')


def trainable_mask(params: Any, c) -> Any:
    return jax.tree.map(lambda label: label != 'frozen', param_labels(params, c))


def create_optimizer(c, params: Any, total_steps: int) -> optax.GradientTransformation:
    decay_mask = jax.tree.map(lambda no_decay: not no_decay, path_mask(params, tuple(c.no_decay)))

    def adamw(peak: float) -> optax.GradientTransformation:
        return optax.adamw(create_schedule(c, total_steps, peak), b1=c.b1, b2=c.b2, eps=c.eps,
                           weight_decay=c.weight_decay, mask=decay_mask)

    labels = param_labels(params, c)
    used = set(jax.tree.leaves(labels))
    if 'body' not in used and 'head' not in used:
        raise ValueError(f'trainable={c.trainable!r} matches no parameter')
    transforms = {'body': adamw(c.lr), 'head': adamw(c.head_lr if c.head_lr is not None else c.lr),
                  'frozen': optax.set_to_zero()}
    # Clip on the gradients of what is trained: frozen grads are zeroed first so they do not count in the norm.
    zero_frozen = optax.masked(optax.set_to_zero(), jax.tree.map(lambda l: l == 'frozen', labels))
    tx = optax.chain(
        zero_frozen,
        optax.clip_by_global_norm(c.clip_norm) if c.clip_norm > 0 else optax.identity(),
        optax.multi_transform({k: v for k, v in transforms.items() if k in used}, labels),
    )
    return tx


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.) -> jax.Array:
    """Per-example softmax cross-entropy in f32, with label smoothing as in torch's CrossEntropyLoss."""
    targets = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
