"""Generic, declarative state-dict <-> Flax params conversion.

A family is described by a table of `Rule(source, target, transform)` rows. Names are templates in which
`{i}` (or any `{name}`) stands for a block index. The engine applies a table in either direction and is
strict: every source key must be used, every target param filled, every shape checked.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Collection, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

Ctx = Mapping[str, Any]  # the model config: transforms read e.g. num_heads from it


class ConversionError(ValueError):
    """Raised with every unmatched / missing / mis-shaped key listed."""


class UnsupportedModel(ValueError):
    """The source model uses an option vitjax has no equivalent for."""


def require(ok: bool, what: str) -> None:
    if not ok:
        raise UnsupportedModel(f'the source model uses {what}, which vitjax does not support yet')


def to_numpy(value):
    """A state-dict value as numpy; torch bf16/f16 tensors are widened to f32 (numpy has no bf16)."""
    if hasattr(value, 'detach'):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype != value.new_zeros(()).float().dtype:
            value = value.float()
        return value.numpy()  # a view: apply_rules makes the one copy
    return np.asarray(value)


@dataclasses.dataclass(frozen=True)
class Transform:
    """`forward(src, ctx) -> tuple of targets`; `inverse(targets, ctx) -> src` (exact inverses)."""
    name: str
    forward: Callable[[np.ndarray, Ctx], tuple[np.ndarray, ...]]
    inverse: Callable[[Sequence[np.ndarray], Ctx], np.ndarray]


def _heads(ctx: Ctx, dim: int, key: str = 'num_heads') -> tuple[int, int]:
    h = int(ctx.get(key) or ctx['num_heads'])  # e.g. the attention pool's own head count, None: the blocks'
    return h, dim // h


IDENTITY = Transform('identity', lambda x, c: (x,), lambda t, c: t[0])
# torch Linear weight is (out, in); a Flax Dense kernel is (in, out).
LINEAR = Transform('linear', lambda x, c: (x.T,), lambda t, c: t[0].T)
# torch Conv2d weight is OIHW; Flax Conv kernel is HWIO.
CONV = Transform('conv', lambda x, c: (x.transpose(2, 3, 1, 0),), lambda t, c: t[0].transpose(3, 2, 0, 1))
def fused_heads(n: int, name: str, key: str = 'num_heads') -> tuple[Transform, Transform]:
    """Kernel and bias transforms for a Linear fusing n projections ((n*D, D), e.g. qkv n=3, kv n=2, q n=1)
    into n DenseGeneral params of shape (D, heads, head_dim) / (heads, head_dim)."""
    kernel = Transform(
        f'{name}_kernel',
        lambda x, c: tuple(w.T.reshape(w.shape[1], *_heads(c, w.shape[0], key)) for w in np.split(x, n, axis=0)),
        lambda t, c: np.concatenate([k.reshape(k.shape[0], -1).T for k in t], axis=0))
    bias = Transform(
        f'{name}_bias',
        lambda x, c: tuple(b.reshape(_heads(c, b.shape[0], key)) for b in np.split(x, n)),
        lambda t, c: np.concatenate([b.reshape(-1) for b in t]))
    return kernel, bias


QKV_KERNEL, QKV_BIAS = fused_heads(3, 'qkv')
HEADS_KERNEL, HEADS_BIAS = fused_heads(1, 'heads')
# The attention pool (MAP head) may have a head count of its own (Perception Encoder: 8).
POOL_KV_KERNEL, POOL_KV_BIAS = fused_heads(2, 'pool_kv', 'attn_pool_num_heads')
POOL_HEADS_KERNEL, POOL_HEADS_BIAS = fused_heads(1, 'pool_heads', 'attn_pool_num_heads')


def out_kernel(key: str = 'num_heads') -> Transform:
    """Attention output Linear (D, D) -> DenseGeneral kernel (heads, head_dim, D) contracting both head axes."""
    return Transform('out_kernel', lambda x, c: (x.T.reshape(*_heads(c, x.shape[1], key), x.shape[0]),),
                     lambda t, c: t[0].reshape(-1, t[0].shape[-1]).T)


OUT_KERNEL, POOL_OUT_KERNEL = out_kernel(), out_kernel('attn_pool_num_heads')


@dataclasses.dataclass(frozen=True)
class Rule:
    source: str
    target: Union[str, tuple[str, ...]]
    transform: Transform = IDENTITY

    @property
    def targets(self) -> tuple[str, ...]:
        return (self.target,) if isinstance(self.target, str) else self.target


def linear(src: str, dst: str) -> tuple[Rule, Rule]:
    return Rule(f'{src}.weight', f'{dst}/kernel', LINEAR), Rule(f'{src}.bias', f'{dst}/bias')


def norm(src: str, dst: str) -> tuple[Rule, Rule]:
    return Rule(f'{src}.weight', f'{dst}/scale'), Rule(f'{src}.bias', f'{dst}/bias')


def _compile(template: str) -> re.Pattern:
    parts = re.split(r'\{(\w+)\}', template)
    regex = ''.join(re.escape(p) if i % 2 == 0 else f'(?P<{p}>\\d+)' for i, p in enumerate(parts))
    return re.compile(regex)


def _match(key: str, templates: Sequence[tuple[str, Any]]):
    for template, payload in templates:
        m = _compile(template).fullmatch(key)
        if m:
            return payload, m.groupdict()
    return None, None


def _raise(what: str, unused: Sequence[str], missing: Sequence[str], wrong: Sequence[str]) -> None:
    if unused or missing or wrong:
        lines = [f'{what}: {len(unused)} unused source keys, {len(missing)} missing, {len(wrong)} wrong shapes']
        lines += [f'  unused source key: {k}' for k in sorted(unused)]
        lines += [f'  missing target: {k}' for k in sorted(missing)]
        lines += [f'  wrong shape: {k}' for k in sorted(wrong)]
        raise ConversionError('\n'.join(lines))


def apply_rules(state: Iterable[tuple[str, np.ndarray]], rules: Sequence[Rule], expected: Mapping[str, tuple],
                ctx: Ctx, what: str = 'conversion') -> dict[str, np.ndarray]:
    """A source state dict's (key, value) pairs -> flat target dict ('/'-joined names), strictly checked against
    `expected` shapes. Pairs, so that a lazily read source is read one tensor at a time."""
    out: dict[str, np.ndarray] = {}
    unused, wrong = [], []
    by_source = [(r.source, r) for r in rules]
    for key, value in state:
        rule, idx = _match(key, by_source)
        if rule is None:
            unused.append(key)
            continue
        for target, arr in zip(rule.targets, rule.transform.forward(np.asarray(value), ctx)):
            name = target.format(**idx)
            if name in out:
                raise ConversionError(f'{what}: two source keys map to {name}')
            # Exactly one copy per tensor, made here: the source may be views of torch storage (an optimizer
            # step on the source model must not change our params), transposed kernels become contiguous, and
            # a source read lazily is freed tensor by tensor.
            out[name] = np.array(arr, order='C', copy=True)
    missing = [k for k in expected if k not in out]
    unused += [f'{k} (no target in this model)' for k in out if k not in expected]
    wrong = [f'{k}: {tuple(out[k].shape)} != {tuple(expected[k])}'
             for k in out if k in expected and tuple(out[k].shape) != tuple(expected[k])]
    _raise(what, unused, missing, wrong)
    return out


def invert_rules(flat: Mapping[str, np.ndarray], rules: Sequence[Rule], ctx: Ctx, what: str = 'export',
                 source_keys: Optional[Collection[str]] = None) -> dict[str, np.ndarray]:
    """Flat target dict -> source state dict: the exact inverse of `apply_rules`. Where one table holds two
    layouts of the same params (Eva's fused or separate q/k/v), `source_keys` (the PyTorch model's) picks."""
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()
    for key in flat:
        # The rule whose first target this is and whose other targets are all here: Eva's fused qkv bias and its
        # separate q/v biases both start at the query bias, and the key bias decides which one wrote it.
        if key in used:
            continue
        found = [(r, m.groupdict()) for r in rules if (m := _compile(r.targets[0]).fullmatch(key))
                 and (source_keys is None or r.source.format(**m.groupdict()) in source_keys)]
        if not found:
            continue
        complete = [(r, idx) for r, idx in found if all(t.format(**idx) in flat for t in r.targets)]
        rule, idx = (complete or found)[0]
        names = [t.format(**idx) for t in rule.targets]
        absent = [n for n in names if n not in flat]
        if absent:
            raise ConversionError(f'{what}: {rule.source.format(**idx)} needs {absent}')
        out[rule.source.format(**idx)] = np.asarray(rule.transform.inverse([flat[n] for n in names], ctx), order='C')
        used.update(names)
    _raise(what, [k for k in flat if k not in used], [], [])
    return out
