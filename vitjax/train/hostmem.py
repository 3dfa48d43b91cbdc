"""Keep XLA:CPU's step buffers in the process instead of handing them back to the OS after every step.

XLA:CPU allocates each execution's temporary buffers afresh (gigabytes for a ViT train step). glibc serves
such sizes with mmap and unmaps them on free, so every step faults in and zeroes gigabytes of new pages:
ViT-S/16 at batch 32 took 1.03 million minor page faults and 1.7 s of system time per 6.05 s step. With one
malloc arena, no mmap and no trimming the memory is reused: 0 faults, 5.44 s (timm's step gains 7% the same
way). glibc reads these settings only at process start, so the training entry point re-executes itself once
with them. Costs: freed memory stays with the process (its peak), and threads share one arena (the tf.data
digits pipeline gives 7.6k instead of 9.2k img/s). Only on a CPU-only jax; `VITJAX_HOST_MALLOC=0` turns it
off.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import sys
from typing import Mapping, Optional

TUNABLES = 'glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736'


def tuned_env(env: Mapping[str, str]) -> Optional[dict[str, str]]:
    """`env` with the malloc settings added, or None where they do not apply or are already there."""
    if env.get('VITJAX_HOST_MALLOC', '1') == '0' or platform.libc_ver()[0] != 'glibc':
        return None
    if 'glibc.malloc' in env.get('GLIBC_TUNABLES', ''):  # set already (by us or by the user): leave it
        return None
    platforms = env.get('JAX_PLATFORMS', '')
    accelerator = importlib.util.find_spec('jax_plugins') or importlib.util.find_spec('libtpu')
    if (platforms and not platforms.startswith('cpu')) or (accelerator and not platforms.startswith('cpu')):
        return None  # a GPU/TPU step keeps its buffers in device memory; the host allocator does not matter
    tunables = ':'.join(t for t in (env.get('GLIBC_TUNABLES'), TUNABLES) if t)
    return {**env, 'GLIBC_TUNABLES': tunables}


def reexec_with_tuned_malloc() -> None:
    """Replace this process by the same command line with the settings in its environment (once)."""
    env = tuned_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
