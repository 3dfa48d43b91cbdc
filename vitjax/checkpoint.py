"""Training checkpoints with orbax: the train state plus a JSON record of where the run stands.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed during a
write leaves the previous checkpoint as the latest one.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str, keep: int = 3):
        self.manager = ocp.CheckpointManager(
            os.path.abspath(directory), options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
        """`state` must be host-local (unreplicated); `meta` is small JSON (data position, rng, config name)."""
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, template: Any, step: Optional[int] = None) -> tuple[Any, dict[str, Any]]:
        """Restore into the structure of `template` (a freshly created state): latest step by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f'no checkpoint in {self.manager.directory}')
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
        return out.state, dict(out.meta)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
