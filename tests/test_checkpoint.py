"""Checkpoints across device layouts, and the damaged-checkpoint fallback firing only on real damage.

The cross-layout test writes a checkpoint from an fsdp state on 4 simulated devices and restores it under
pmap on 2, each in its own process (a device count is fixed when jax starts)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# a state with a leaf big enough that fsdp shards it over the 4 devices (min_bytes=0 shards everything)
STATE = "{'w': np.arange(64 * 8, dtype=np.float32).reshape(64, 8) * 1e-3, 'b': np.ones(5, np.float32), " \
        "'step': np.int32(7)}"


def _in_process(devices, code):
    env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}', JAX_PLATFORMS='cpu')
    prelude = 'import sys, jax, numpy as np\nsys.path.insert(0, ".")\nfrom vitjax.train import parallel\n' \
              'from vitjax.train.checkpoint import Checkpointer\n'
    proc = subprocess.run([sys.executable, '-c', prelude + textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_an_fsdp_checkpoint_of_4_devices_restores_under_pmap_on_2(tmp_path):
    d = str(tmp_path / 'ckpt')
    _in_process(4, f"""
        par = parallel.create('fsdp', 0)
        state = par.create_state(lambda p: p, {STATE})
        assert len(state['w'].sharding.device_set) == 4   # really laid out over the 4 devices
        pmap = parallel.create('pmap')
        ck = Checkpointer({d!r})
        ck.save(10, pmap.checkpoint_view(pmap.create_state(lambda p: p, {STATE})), {{'step': 10}})
        ck.save(20, par.checkpoint_view(state), {{'step': 20}})
        ck.close()
    """)
    out = _in_process(2, f"""
        par = parallel.create('pmap')
        target = par.restore_target(par.create_state(lambda p: p, jax.tree.map(np.zeros_like, {STATE})))
        ck = Checkpointer({d!r})
        state, meta = ck.restore_intact(target)
        host = par.host_state(par.adopt(state))
        assert meta['step'] == 20, meta
        for k, v in {STATE}.items():
            np.testing.assert_array_equal(host[k], v)
        print('restored', meta['step'])
    """)
    assert 'restored 20' in out and 'damaged' not in out
    assert sorted(os.listdir(d)) == ['10', '20']  # nothing set aside


def _damage(step_dir):
    f = max((p for p in step_dir.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(raw)


def test_a_step_set_aside_twice_keeps_both_copies(tmp_path):
    """A resume sets damaged step 20 aside, the run writes step 20 again, that one is damaged too: the next
    resume sets it aside beside the first (not a failed rename onto `20.corrupt`) and goes back to step 10."""
    from vitjax.train.checkpoint import Checkpointer
    state = {'w': np.arange(4096, dtype=np.float32), 'b': np.ones(3, np.float32)}
    target = {k: np.zeros_like(v) for k, v in state.items()}
    d = tmp_path / 'ckpt'
    for i in range(2):
        ck = Checkpointer(str(d))
        if i == 0:
            ck.save(10, state, {'step': 10})
        ck.save(20, {k: v + 1 for k, v in state.items()}, {'step': 20})
        ck.close()
        _damage(d / '20')
        said = []
        ck = Checkpointer(str(d))
        restored, meta = ck.restore_intact(target, report=said.append)
        ck.close()
        assert meta['step'] == 10 and any('checkpoint 20 is damaged' in s for s in said), said
        np.testing.assert_array_equal(restored['w'], state['w'])
    assert sorted(os.listdir(d)) == ['10', '20.corrupt', '20.corrupt-1']


def test_a_layout_error_is_not_damage(tmp_path, monkeypatch):
    """An error saying the checkpoint does not fit this run's devices sets nothing aside and says why."""
    from vitjax.train import checkpoint
    state = {'w': np.arange(16, dtype=np.float32)}
    ck = checkpoint.Checkpointer(str(tmp_path / 'c'))
    ck.save(10, state, {'step': 10})
    ck.save(20, state, {'step': 20})

    def restore(target, step=None):
        if step == 20:
            raise ValueError('Topology mismatch detected. The checkpoint was saved with a different topology')
        return state, {'step': step}
    monkeypatch.setattr(ck, 'restore', restore)
    with pytest.raises(ValueError, match="checkpoint 20 .* does not restore into this run's device layout"):
        ck.restore_intact(state)
    ck.close()
    assert sorted(os.listdir(tmp_path / 'c')) == ['10', '20']
