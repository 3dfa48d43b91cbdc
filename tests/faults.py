"""Fault injection for the reliability tests, through the trainer's hooks (vitjax.train.trainer.Hooks): nothing of this
ships in the modules users run. In-process runs pass `FaultHooks(...)` to `tests/trainrun.py`; subprocess runs
(a kill or a signal needs a process of its own) start `tests/faulty_train.py` with VITJAX_FAULT set."""
import os
import signal

import numpy as np

from vitjax.train.trainer import Hooks

KINDS = ('kill_in_save', 'nan_at', 'sigterm_at')


class FaultHooks(Hooks):
    """'nan_at=5,6;kill_in_save=20;sigterm_at=25' poisons the batches of steps 5 and 6 with NaN, SIGKILLs the
    process while the step-20 checkpoint is being written, and sends it a SIGTERM during step 25 (at a known step,
    unlike a signal from outside)."""

    def __init__(self, nan_at=(), kill_in_save=(), sigterm_at=()):
        self.nan_at, self.kill_in_save, self.sigterm_at = set(nan_at), set(kill_in_save), set(sigterm_at)

    @classmethod
    def parse(cls, spec: str) -> 'FaultHooks':
        faults = {}
        for item in filter(None, spec.split(';')):
            key, _, steps = item.partition('=')
            if key not in KINDS:
                raise ValueError(f'VITJAX_FAULT: unknown fault {key!r} (known: {", ".join(KINDS)})')
            faults[key] = {int(v) for v in steps.split(',')}
        return cls(**faults)

    def batch(self, step, batch):
        # float NaN pixels (the steps take float images as normalised): one extra compile, in fault tests only
        return dict(batch, image=np.full(batch['image'].shape, np.nan, np.float32)) if step in self.nan_at else batch

    def after_step(self, step):
        if step in self.sigterm_at:
            os.kill(os.getpid(), signal.SIGTERM)

    def after_save(self, step):
        if step in self.kill_in_save:
            os.kill(os.getpid(), signal.SIGKILL)  # while orbax is still writing in the background
