"""Where the train state and the batches live on the devices. The only module that knows; the trainer, the
evaluation and the benchmarks hand it host arrays and step functions and get host numbers back.

    pmap  every local device holds a replica of the state and a slice of the batch, laid out as
          (local_devices, per_device, ...); the steps average with `lax.pmean` / sum with `lax.psum` over 'batch'.
    fsdp  `jax.jit` over a 1-D mesh of all devices (axis 'data'): each parameter and both Adam moments are
          sharded along their largest dimension that the device count divides, once they are big enough to be
          worth it (big_vision's fsdp rule), small ones are replicated; the batch is sharded on 'data' and XLA
          inserts the all-gathers and reduce-scatters. Multi-host: each process passes its own rows.

Both modes keep the same checkpoint format (whole arrays; orbax writes each host's shards under fsdp), so a
run checkpointed under one resumes under the other.
"""
from __future__ import annotations

import collections
import functools
import itertools
import math
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MODES = ('pmap', 'fsdp')
AXIS = 'batch'  # pmap's axis name (the steps' collectives use it)


def create(mode: str, fsdp_min_bytes: int = 4 << 20) -> 'Parallel':
    if mode == 'pmap':
        return Pmap()
    if mode == 'fsdp':
        return Fsdp(fsdp_min_bytes)
    raise ValueError(f'parallelism must be one of {", ".join(MODES)} (got {mode!r})')


def any_process(flag: bool) -> bool:
    """Whether `flag` is true on any process, the same answer on all (a tiny all-gather; every process must
    call it at the same point). With one process, no collective."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def same_on_all_processes(digest: str) -> bool:
    """Whether every process holds the same hex `digest` (e.g. of its final params)."""
    if jax.process_count() == 1:
        return True
    from jax.experimental import multihost_utils
    mine = np.frombuffer(bytes.fromhex(digest), np.uint8)
    return bool((multihost_utils.process_allgather(mine) == mine).all())


def gather_json(value: Any) -> list[Any]:
    """Every process's `value` (anything JSON holds), in process order, on every process."""
    import json
    if jax.process_count() == 1:
        return [value]
    from jax.experimental import multihost_utils
    mine = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.int32(mine.size)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:mine.size] = mine
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, sizes)]


def barrier(name: str) -> None:
    """Wait until every process gets here (after process 0 alone wrote or renamed files the others read)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


class Parallel:
    mode: str
    axis_name: Any  # what the step functions get as `axis_name`: 'batch' under pmap, None under jit

    def create_state(self, make_state: Callable[[Any], Any], params: Any) -> Any:
        """`make_state(params)` (e.g. params + optimizer init) run where the state will live."""
        raise NotImplementedError

    def compile(self, train_fn: Callable, eval_fn: Callable, state: Any) -> tuple[Callable, Callable]:
        """(train(state, batch) -> (state, metrics), eval(params, batch) -> sums); the state is donated. With
        `train_fn` None only the eval step is compiled (evaluating a model: `state` may be None too)."""
        raise NotImplementedError

    def put_batch(self, batch: dict) -> dict:
        raise NotImplementedError

    def precompile(self, train: Callable, state: Any, batch: dict) -> tuple[Callable, Any]:
        """`train` compiled ahead of time for device batches like `put_batch(batch)`, and XLA's memory analysis
        of it (per device). A batch of another shape or dtype (the fault tests' float NaN images) goes to
        `train` itself, which compiles for it."""
        example = self.put_batch(batch)
        compiled = train.lower(state, example).compile()
        signature = lambda b: [(x.shape, x.dtype) for x in jax.tree.leaves(b)]
        expected = signature(example)
        del example

        def step(state, batch):
            return (compiled if signature(batch) == expected else train)(state, batch)
        return step, compiled.memory_analysis()

    def get(self, tree: Any) -> Any:
        """Numpy copies of what the steps return (metrics, eval sums, counters): one value, not per replica."""
        raise NotImplementedError

    def host_state(self, state: Any) -> Any:
        """The whole state as numpy arrays (the final model, the checksum)."""
        raise NotImplementedError

    def checkpoint_view(self, state: Any) -> Any:
        """What orbax saves: whole arrays, however they are laid out."""
        raise NotImplementedError

    def restore_target(self, state: Any) -> Any:
        """The abstract tree orbax restores into (shapes, dtypes and, where it matters, shardings)."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), self.checkpoint_view(state))

    def adopt(self, restored: Any) -> Any:
        """A restored checkpoint laid out as this mode's state."""
        raise NotImplementedError

    def batches(self, host_batches: Iterable[dict], size: int = 2) -> Iterator[dict]:
        """Device batches, `size` ahead: the host-to-device copy of the next batch overlaps the current step."""
        queue = collections.deque()
        it = iter(host_batches)
        for batch in itertools.islice(it, size):
            queue.append(self.put_batch(batch))
        while queue:
            yield queue.popleft()
            for batch in itertools.islice(it, 1):
                queue.append(self.put_batch(batch))

    def state_bytes_per_device(self, state: Any) -> dict[str, int]:
        """Bytes of `state` on each local device, measured from the arrays' addressable shards."""
        out = collections.Counter()
        for leaf in jax.tree.leaves(state):
            for shard in leaf.addressable_shards:
                out[str(shard.device)] += shard.data.size * shard.data.dtype.itemsize
        return dict(out)


class Pmap(Parallel):
    mode, axis_name = 'pmap', AXIS

    def __init__(self):
        devices = jax.local_devices()
        # The steps' inputs carry the mesh axis the pmapped steps return their outputs on: with another name
        # (flax's replicate uses '_device_put_sharded') step 2 would see a new input sharding and compile again.
        self.sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
        self.n = len(devices)

    def create_state(self, make_state, params):
        return self.replicate(jax.jit(make_state)(params))

    def replicate(self, tree):
        # a broadcast view of the host array: each device receives its copy, the host makes none
        return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(x, (self.n, *np.shape(x))), self.sharding),
                            jax.device_get(tree))

    def precompile(self, train, state, batch):
        step, stats = super().precompile(train, state, batch)
        # Across processes the AOT executable expects global avals while pmap is handed each process's local
        # replicas: there the analysis is all it gives, and the pmapped step compiles once more on first call.
        return (train if jax.process_count() > 1 else step), stats

    def compile(self, train_fn, eval_fn, state):
        train = train_fn and jax.pmap(functools.partial(train_fn, axis_name=AXIS), axis_name=AXIS,
                                      donate_argnums=(0,))
        evaluate = jax.pmap(functools.partial(eval_fn, axis_name=AXIS), axis_name=AXIS)
        return train, evaluate

    def put_batch(self, batch):
        def put(x):
            x = np.asarray(x)
            if x.shape[0] % self.n:
                raise ValueError(f'batch of {x.shape[0]} does not split over {self.n} devices')
            return jax.device_put(x.reshape(self.n, x.shape[0] // self.n, *x.shape[1:]), self.sharding)
        return jax.tree.map(put, batch)

    def get(self, tree):
        # this process's first replica: `x[0]` would be a program over every host's devices, which a host that
        # reaches it alone (e.g. before a checkpoint the others are already writing) waits on forever
        return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)).reshape(x.shape[1:]), tree)

    host_state = get

    checkpoint_view = host_state

    def restore_target(self, state):
        # An explicit place: without one orbax restores into the layout saved with the checkpoint, which an fsdp
        # run on another device count wrote ('Topology mismatch'). Each process restores whole arrays.
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, sharding=device), state)

    def adopt(self, restored):
        return self.replicate(jax.device_get(restored))


class Fsdp(Parallel):
    mode, axis_name = 'fsdp', None

    def __init__(self, min_bytes: int = 4 << 20):
        self.mesh = Mesh(np.asarray(jax.devices()), ('data',))
        self.min_bytes = min_bytes
        self.replicated = NamedSharding(self.mesh, P())

    def spec(self, shape: tuple[int, ...], itemsize: int) -> P:
        """big_vision's fsdp rule: the largest dimension the device count divides; small arrays replicated."""
        n = self.mesh.size
        if n == 1 or math.prod(shape) * itemsize < self.min_bytes:
            return P()
        for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
            if shape[i] % n == 0:
                return P(*[None] * i, 'data')
        return P()

    def shardings(self, tree: Any) -> Any:
        return jax.tree.map(lambda x: NamedSharding(self.mesh, self.spec(np.shape(x), x.dtype.itemsize)), tree)

    def create_state(self, make_state, params):
        # Params arrive sharded and the optimizer state is born sharded: no device ever holds all of either.
        params = jax.device_put(params, self.shardings(params))
        out = self.shardings(jax.eval_shape(make_state, params))
        return jax.jit(make_state, out_shardings=out)(params)

    def compile(self, train_fn, eval_fn, state):
        train = train_fn and jax.jit(functools.partial(train_fn, axis_name=None), donate_argnums=(0,),
                                     out_shardings=(jax.tree.map(lambda x: x.sharding, state), self.replicated))
        evaluate = jax.jit(functools.partial(eval_fn, axis_name=None), out_shardings=self.replicated)
        return train, evaluate

    def put_batch(self, batch):
        def put(x):
            x = np.asarray(x)
            sharding = NamedSharding(self.mesh, P('data', *[None] * (x.ndim - 1)))
            return jax.make_array_from_process_local_data(sharding, x)
        return jax.tree.map(put, batch)

    def get(self, tree):
        return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)

    def host_state(self, state):
        from jax.experimental import multihost_utils
        if all(x.is_fully_addressable for x in jax.tree.leaves(state)):
            return jax.device_get(state)
        return multihost_utils.process_allgather(state, tiled=True)

    def checkpoint_view(self, state):
        return state  # orbax writes each host's shards

    def restore_target(self, state):
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)

    def adopt(self, restored):
        return restored
