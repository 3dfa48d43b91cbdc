"""vitjax.train.parallel: pmap and fsdp lay the same train state out differently and compute the same steps."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FOUR = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', JAX_PLATFORMS='cpu')


def _worker(tmp, job, *args):
    """tests/parallel_worker.py JOB on 4 simulated devices -> what it wrote."""
    out = tmp / 'worker.json'
    proc = subprocess.run([sys.executable, 'tests/parallel_worker.py', job, str(out), *args], cwd=ROOT, env=FOUR,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope='module')
def four_devices(tmp_path_factory):
    return _worker(tmp_path_factory.mktemp('steps'), 'steps')


@pytest.mark.slow
def test_fsdp_steps_equal_pmap_steps(four_devices):
    r = four_devices
    a, b = r['pmap_params'], r['fsdp_params']
    assert a.keys() == b.keys()
    worst = max(float(np.abs(np.asarray(a[k]) - np.asarray(b[k])).max()) for k in a)
    assert worst <= 1e-6, worst
    assert r['pmap_loss'] == pytest.approx(r['fsdp_loss'], rel=1e-6)


def test_fsdp_holds_a_quarter_of_the_state_per_device(four_devices):
    r = four_devices
    pmap, fsdp = r['pmap_bytes'], r['fsdp_bytes']
    assert len(pmap) == len(fsdp) == 4 and len(set(pmap.values())) == 1
    assert r['fsdp_sharded_leaves'] > 0
    for device, used in fsdp.items():
        assert used <= pmap[device] / 4 + r['replicated_bytes'], (device, used, pmap[device])
    assert r['replicated_bytes'] < 0.02 * pmap[device]  # only the scalars and the rng key stay whole


def test_sharding_rule():
    from vitjax.train import parallel
    par = parallel.Fsdp(min_bytes=1 << 20)
    n = par.mesh.size
    from jax.sharding import PartitionSpec as P
    assert par.spec((8,), 4) == P()  # small: replicated
    if n == 1:
        assert par.spec((4096, 1024), 4) == P()
        return
    assert par.spec((1024 * n, 768), 4) == P('data', None)  # the largest divisible dimension
    assert par.spec((768, 1024 * n), 4) == P(None, 'data')
    assert par.spec((1000 * n + 1, 768 * n), 4) == P(None, 'data')


def test_unknown_mode():
    from vitjax.train import parallel
    with pytest.raises(ValueError, match="parallelism must be one of pmap, fsdp"):
        parallel.create('ddp')


# 12 steps, a stop after 6 (between the checkpoints of steps 4 and 8), an eval every 4 steps. fsdp_min_size_mb=0:
# fsdp shards every array 4 divides (the default 4 MB leaves all of this model whole on every device).
STEPS, STOP = 12, 6
RUN = ['--config.model_overrides.depth=1', f'--config.total_steps={STEPS}', '--config.warmup_steps=2',
       '--config.log_every=3', '--config.eval_every=4', '--config.checkpoint_every=4', '--config.batch_size=64',
       '--config.fsdp_min_size_mb=0']


def _train(tmp, data_dir, *runs):
    """train.py for each (workdir, arg, ...) of `runs`, in order, in one process on 4 simulated devices:
    stdout of each."""
    done = _worker(tmp, 'train', json.dumps([[str(w), *RUN, *args, f'--config.data_dir={data_dir}']
                                              for w, *args in runs]))
    for r in done:
        assert r['rc'] == 0, r['stderr'][-3000:]
    return [r['stdout'] for r in done]


def _params(workdir):
    import vitjax
    from vitjax.io import flatten
    return flatten(vitjax.load(workdir / 'model')[1]['params'])


@pytest.mark.slow
def test_fsdp_resume_is_exact_and_checkpoints_cross_modes(tmp_path):
    """4 simulated devices. fsdp stop + --resume is bit-exact; a pmap checkpoint resumes under fsdp and an fsdp
    one under pmap (the checkpoint holds whole arrays either way), ending where the uninterrupted run ends
    within the two modes' summation-order difference. Every resume runs in a process other than the one that
    wrote its checkpoint."""
    import shutil
    from test_train import records
    data_dir, full = tmp_path / 'tfds', tmp_path / 'full'
    stopped = _train(tmp_path, data_dir, (full, '--config.parallelism=fsdp'),
                     (tmp_path / 'f', '--config.parallelism=fsdp', f'--stop_after={STOP}'),
                     (tmp_path / 'p2f', f'--stop_after={STOP}'))  # pmap is the default
    assert all(f'stopped after step {STOP} of {STEPS}' in out for out in stopped[1:])
    shutil.copytree(tmp_path / 'f', tmp_path / 'f2p')
    resumed = _train(tmp_path, data_dir, (tmp_path / 'f', '--config.parallelism=fsdp', '--resume'),
                     (tmp_path / 'p2f', '--config.parallelism=fsdp', '--resume'),
                     (tmp_path / 'f2p', '--config.parallelism=pmap', '--resume'))
    assert all(f'resumed from step {STOP}' in out for out in resumed)
    assert records(tmp_path / 'f', 'eval') == records(full, 'eval')
    a, b = _params(tmp_path / 'f'), _params(full)
    assert all(np.array_equal(a[k], b[k]) for k in b)
    for workdir in (tmp_path / 'p2f', tmp_path / 'f2p'):
        a = _params(workdir)
        for k in b:  # the key bias's true gradient is 0: its rounding noise, signed by the reduction order, gets
            # Adam steps of up to lr (tests/test_distributed.py measures the same); each run took STOP or
            # STEPS - STOP steps in the other mode, at lr <= 2e-3
            atol = max(STOP, STEPS - STOP) * 2e-3 if k.endswith('key/bias') else 1e-5
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=atol, err_msg=k)
        assert [r['accuracy'] for r in records(workdir, 'eval')] == [r['accuracy'] for r in records(full, 'eval')]
