"""The training entry point's malloc settings: applied once by re-executing, and they stop per-step page faults."""
import os
import subprocess
import sys

import pytest

from vitjax.train import hostmem

# malloc, touch and free 256 MB four times (as XLA:CPU does with a step's buffers; numpy would ask for huge
# pages); count the minor page faults of the last three rounds.
PROBE = '''
import ctypes, os, resource
from vitjax.train import hostmem
hostmem.reexec_with_tuned_malloc()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
def touch(n=256 << 20):
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
touch()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(os.environ.get('GLIBC_TUNABLES'), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
'''


def probe(**env):
    out = subprocess.run([sys.executable, '-c', PROBE], env={**os.environ, 'JAX_PLATFORMS': 'cpu', **env},
                         capture_output=True, text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(hostmem.tuned_env({'JAX_PLATFORMS': 'cpu'}) is None, reason='not a glibc CPU host')
def test_reexec_sets_tunables_and_memory_is_reused():
    tunables, faults = probe()
    assert tunables == hostmem.TUNABLES
    assert faults < 1000  # the 256 MB block is reused, not mapped afresh
    tunables, faults = probe(VITJAX_HOST_MALLOC='0')
    assert tunables == 'None'
    assert faults > 3 * 60000  # 3 x 65536 fresh 4 KiB pages (mmap'd and unmapped each time)


def test_tuned_env_keeps_user_settings():
    env = hostmem.tuned_env({'GLIBC_TUNABLES': 'glibc.pthread.rseq=0', 'JAX_PLATFORMS': 'cpu'})
    if env is None:
        pytest.skip('not a glibc host')
    assert env['GLIBC_TUNABLES'] == 'glibc.pthread.rseq=0:' + hostmem.TUNABLES
    assert hostmem.tuned_env({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=4'}) is None  # the user's choice wins
    assert hostmem.tuned_env({'VITJAX_HOST_MALLOC': '0'}) is None
    assert hostmem.tuned_env({'JAX_PLATFORMS': 'cuda'}) is None
