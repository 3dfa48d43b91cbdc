"""Training checkpoints with orbax: the train state plus a JSON record of where the run stands.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed during a
write leaves the previous checkpoint as the latest one (the temporary directory is removed at the next save).
The record carries a SHA-256 of the state's arrays, taken from the very arrays handed to orbax: a resume
recomputes it over what it restored, so damaged files are found even where orbax reads them without error.
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Callable, Optional

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


def state_digest(state: Any) -> Optional[str]:
    """SHA-256 over every leaf's path, dtype, shape and bytes; None where this process does not hold every
    element (a state sharded over several hosts: each host's orbax shards are not checked)."""
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(state)):
        return None
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f'{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}|'.encode())
        h.update(a.data)
    return h.hexdigest()


# Errors that say a checkpoint was written for other devices, not that its bytes are bad.
LAYOUT_ERRORS = re.compile(r'topology|sharding|mesh', re.I)


def _aside(root: epath.Path, step: int) -> str:
    """`<step>.corrupt`, or `<step>.corrupt-N` when an earlier resume already set a `<step>` aside: the step
    is written again after the first set-aside, and may be damaged again."""
    names = {p.name for p in root.iterdir()}
    return next(n for n in (f'{step}.corrupt', *(f'{step}.corrupt-{i}' for i in range(1, 10**6))) if n not in names)


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        from vitjax.storage import is_url
        self.directory = directory if is_url(directory) else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """`state`: whole arrays (numpy, or jax arrays however sharded); `meta`: small JSON (step, config name)."""
        meta = dict(meta, state_sha256=state_digest(state))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, target: Any, step: Optional[int] = None) -> tuple[Any, dict[str, Any]]:
        """Restore into `target` (a tree of jax.ShapeDtypeStruct, with shardings where they matter): latest step
        by default. Raises ValueError if the restored arrays do not match the checksum saved with them."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {self.directory}')
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        meta = dict(out.meta)
        expected = meta.get('state_sha256')
        if expected is not None and state_digest(out.state) not in (None, expected):
            raise ValueError('the restored arrays do not match the checksum written with them')
        return out.state, meta

    def restore_intact(self, target: Any, report: Callable[[str], None] = print) -> tuple[Any, dict[str, Any]]:
        """The newest checkpoint that restores and verifies. Damaged newer ones are renamed `<step>.corrupt`
        (kept for inspection, out of orbax's sight, so the run can write that step again) and reported; if
        none is intact, nothing is renamed and the error lists each step with what is wrong with it."""
        problems = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            try:
                state, meta = self.restore(target, step)
            except Exception as e:  # orbax/tensorstore raise many types for truncated or garbled files
                first_line = (str(e).strip().splitlines() or [''])[0][:300]
                if LAYOUT_ERRORS.search(first_line):  # intact bytes that do not fit this run: not damage
                    raise ValueError(f'checkpoint {step} in {self.directory} does not restore into this run\'s '
                                     f'device layout ({type(e).__name__}: {first_line}); nothing was set aside') from e
                problems.append((step, f'{type(e).__name__}: {first_line}'))
                continue
            root = epath.Path(self.directory)
            for bad, why in problems:  # every process finds the same damage; process 0 moves it
                aside = _aside(root, bad)
                if jax.process_index() == 0:  # epath: on an object store a rename is a copy and a delete
                    (root / str(bad)).rename(root / aside)
                report(f'checkpoint {bad} is damaged ({why}); set aside as {self.directory}/{aside}')
            if problems:
                from vitjax.train.parallel import barrier
                barrier('vitjax-checkpoints-set-aside')
                self.manager.reload()
                report(f'resuming from step {step}, the newest intact checkpoint')
            return state, meta
        if not problems:
            raise FileNotFoundError(f'no checkpoint in {self.directory}')
        raise ValueError(f'no intact checkpoint in {self.directory}:\n' +
                         '\n'.join(f'  step {s}: {why}' for s, why in problems))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
