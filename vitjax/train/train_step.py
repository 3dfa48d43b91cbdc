"""Train state and the train / eval steps, written once for every layout `vitjax.train.parallel` puts them in.

With an `axis_name` (pmap) each device holds a replica of the state and a slice of the batch; gradients and
metrics are averaged with `lax.pmean`, eval sums with `lax.psum`, and each device folds its index into the
dropout rng so replicas drop different units. Without one (jit over a mesh), the step sees the global batch
and XLA places the collectives.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence

import flax
import jax
import jax.numpy as jnp
import optax

from vitjax.train.optim import cross_entropy


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    nonfinite_steps: jax.Array  # updates skipped because the loss or a gradient was NaN/Inf
    first_nonfinite: jax.Array  # the first such step (1-based), -1 while there is none


def create_train_state(model, variables: dict, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
    del model  # the module stays static; only arrays live in the state
    params = variables['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
                      nonfinite_steps=jnp.zeros((), jnp.int32), first_nonfinite=jnp.full((), -1, jnp.int32))


def model_input(image: jax.Array, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> jax.Array:
    """The input pipeline's uint8 pixels as the model's normalised input: on the device, inside the jitted step,
    where XLA fuses it into the patch embedding's input (the host ships 1 byte per value instead of 4). Float
    images are taken as already normalised (benchmarks, tests, injected faults)."""
    if image.dtype != jnp.uint8:
        return image
    if mean is None or std is None:
        raise ValueError('uint8 images need the model\'s mean and std to be normalised')
    return (image.astype(jnp.float32) / 255.0 - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def train_step(state: TrainState, batch: dict, *, model, tx: optax.GradientTransformation,
               lr_fn: Callable, num_classes: int, label_smoothing: float = 0., accum_steps: int = 1,
               trainable: Any = None, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
               axis_name: Optional[str] = None) -> tuple[TrainState, dict]:
    """One optimizer update. With accum_steps=k the batch is split into k micro-batches whose gradients are
    averaged (a scan, so only one micro-batch of activations is alive at a time). `trainable` (a tree of
    bools) zeroes frozen gradients, so `grad_norm` is the norm that clipping sees."""
    rng = jax.random.fold_in(state.rng, state.step)
    if axis_name is not None:
        rng = jax.random.fold_in(rng, jax.lax.axis_index(axis_name))

    def loss_fn(params, micro, rng):
        image = model_input(micro['image'], mean, std)
        logits = model.apply({'params': params}, image, train=True, rngs={'dropout': rng})
        loss = cross_entropy(logits, micro['label'], num_classes, label_smoothing).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == micro['label'])

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, accuracy), grads = grad_fn(state.params, batch, rng)
    else:
        micro = jax.tree.map(lambda x: jnp.reshape(x, (accum_steps, x.shape[0] // accum_steps, *x.shape[1:])),
                             batch)

        def body(carry, xs):
            mb, i = xs
            (loss, acc), g = grad_fn(state.params, mb, jax.random.fold_in(rng, i))
            return jax.tree.map(jnp.add, carry, (loss, acc, g)), None

        zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
        (loss, accuracy, grads), _ = jax.lax.scan(body, zeros, (micro, jnp.arange(accum_steps)))
        loss, accuracy, grads = jax.tree.map(lambda x: x / accum_steps, (loss, accuracy, grads))
    if trainable is not None:
        grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        loss, accuracy = jax.lax.pmean((loss, accuracy), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # A NaN/Inf loss, gradient or update never reaches the params or the Adam moments: the step is skipped (the
    # same decision on every device, as loss and grads are already averaged). The host decides whether to go on.
    # A global norm is NaN/Inf iff some element is (or it overflows). One reduction each: a per-leaf isfinite
    # check made XLA compile the ViT-S step in 40 s instead of 7 s. The update has its own check: finite
    # gradients still give a non-finite update through the optimizer (a 0/0 in Adam, an overflowing lr).
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(optax.tree.norm(updates))
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    metrics = {'loss': loss, 'accuracy': accuracy, 'grad_norm': grad_norm,
               'lr': lr_fn(state.step), 'finite': finite.astype(jnp.float32)}
    first = jnp.where((state.first_nonfinite < 0) & ~finite, state.step + 1, state.first_nonfinite)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         nonfinite_steps=state.nonfinite_steps + (~finite).astype(jnp.int32),
                         first_nonfinite=first), metrics


def eval_step(params: Any, batch: dict, *, model, num_classes: int, mean: Optional[Sequence[float]] = None,
              std: Optional[Sequence[float]] = None, axis_name: Optional[str] = None) -> dict:
    """Sums over the real (mask 1) examples, so padded batches count every example exactly once."""
    logits = model.apply({'params': params}, model_input(batch['image'], mean, std)).astype(jnp.float32)
    mask = batch['mask'].astype(jnp.float32)
    labels = batch['label']
    top5 = jnp.argsort(logits, -1)[:, -5:]
    sums = {'loss_sum': jnp.sum(cross_entropy(logits, labels, num_classes) * mask),
            'correct': jnp.sum((jnp.argmax(logits, -1) == labels) * mask),
            'correct_top5': jnp.sum(jnp.any(top5 == labels[:, None], -1) * mask),
            'count': jnp.sum(mask)}
    return jax.lax.psum(sums, axis_name) if axis_name is not None else sums


def counting(fn: Callable, traces: dict, key: str) -> Callable:
    """`fn` that counts its traces in `traces[key]`: a Python side effect runs once per trace (each new shape or
    dtype signature compiles again), never per executed step, so a count above 1 means a recompilation."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        traces[key] = traces.get(key, 0) + 1
        return fn(*args, **kwargs)
    return wrapped


def step_functions(model, tx: optax.GradientTransformation, lr_fn: Callable, num_classes: int, *,
                   label_smoothing: float = 0., accum_steps: int = 1, trainable: Any = None,
                   mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                   traces: Optional[dict] = None) -> tuple[Callable, Callable]:
    """(train_fn(state, batch, axis_name), eval_fn(params, batch, axis_name)) for `vitjax.train.parallel` to compile.
    `mean` / `std` normalise uint8 batches on the device (`model_input`). Pass a dict as `traces` to have the
    compilations of each step counted into it ('train', 'eval')."""
    traces = {} if traces is None else traces
    train = functools.partial(counting(train_step, traces, 'train'), model=model, tx=tx, lr_fn=lr_fn,
                              num_classes=num_classes, label_smoothing=label_smoothing, accum_steps=accum_steps,
                              trainable=trainable, mean=mean, std=std)
    return train, functools.partial(counting(eval_step, traces, 'eval'), model=model, num_classes=num_classes,
                                    mean=mean, std=std)
