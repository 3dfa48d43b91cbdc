"""Two processes on 127.0.0.1 (jax.distributed + CPU gloo collectives, 2 simulated devices each) train with
per-process data shards and end with the same params as each other and as one process over the same global
batch on 4 devices. Bounded in time; the processes are always cleaned up."""
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _run(tmp_path, nproc, local_devices, modes):
    """tests/dist_worker.py as `nproc` processes -> [{mode: final params and losses}] per process."""
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, 'dist_worker.py'), str(i), str(nproc),
                               str(local_devices), port, str(tmp_path / f'{nproc}-{i}'), ','.join(modes)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(nproc)]
    try:
        for p in procs:
            _, err = p.communicate(timeout=240)
            assert p.returncode == 0, err[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [{m: dict(np.load(tmp_path / f'{nproc}-{i}-{m}.npz')) for m in modes} for i in range(nproc)]


@pytest.fixture(scope='module')
def two_and_one(tmp_path_factory):
    """Both modes in one start of the two processes; the one-process pmap reference they are both held to."""
    tmp = tmp_path_factory.mktemp('dist')
    return _run(tmp, nproc=2, local_devices=2, modes=('pmap', 'fsdp')), _run(tmp, 1, 4, ('pmap',))[0]['pmap']


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['pmap', 'fsdp'])
def test_two_processes_match_each_other_and_one_process(two_and_one, mode):
    """fsdp: each process holds a quarter of every sharded array; the final params are gathered from all."""
    (a, b), single = [r[mode] for r in two_and_one[0]], two_and_one[1]
    assert a.keys() == b.keys() == single.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)  # replicas never drift apart
    # The attention key bias has a true gradient of exactly 0 (softmax ignores a constant shift), so what it
    # gets is rounding noise whose sign depends on the all-reduce order, and Adam turns any sign into a step
    # of ~lr: it is held to that bound. Everything else: 1e-6 absolute or 1e-5 relative. The two runs sum
    # gradients in different orders (per-device GEMMs, then the all-reduce), ~1e-7 relative, and Adam's
    # m/sqrt(v) magnifies that for gradients that nearly cancel: measured 1.01e-6 (8.7e-6 relative) on one
    # of 1024 elements of a query kernel.
    lr_bound = 4 * 3e-3
    for k in a:
        if k.endswith('attn.key.bias'):
            np.testing.assert_allclose(a[k], single[k], rtol=0, atol=lr_bound, err_msg=k)
        else:
            np.testing.assert_allclose(a[k], single[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert not np.allclose(a['losses'][0], a['losses'][-1])  # the steps did change the params


# train.py itself on two processes: a num_epochs run (0.25 epoch of the 1,437 digits at batch 64 = 6 steps),
# one depth-1 block, a log and checkpoint every 2 steps; data_shards=2 so that one process reads the very
# batches the two processes read together.
TRAIN = ['--config.model_overrides.depth=1', '--config.num_epochs=0.25', '--config.warmup_steps=2',
         '--config.batch_size=64', '--config.log_every=2', '--config.eval_every=100', '--config.checkpoint_every=2',
         '--config.data_shards=2']
RUN_FILES = {'config.json', 'metrics.jsonl', 'tensorboard', 'checkpoints', 'summary.json', 'curves.png', 'model'}


def _train_py(workdir, data_dir, nproc, local_devices, *extra, faults=()):
    """train.py as `nproc` processes on 127.0.0.1; `faults`: VITJAX_FAULT per process (tests/faulty_train.py
    then runs instead of train.py). -> [(rc, stdout, stderr)]"""
    port, root = _free_port(), os.path.dirname(HERE)
    procs = []
    for i in range(nproc):
        env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={local_devices}',
                   VITJAX_FAULT=dict(faults).get(i, ''))
        cluster = ['--config.distributed=True', f'--config.coordinator_address=127.0.0.1:{port}',
                   f'--config.num_processes={nproc}', f'--config.process_id={i}'] if nproc > 1 else []
        script = 'tests/faulty_train.py' if faults else 'train.py'
        procs.append(subprocess.Popen([sys.executable, script, f'--workdir={workdir}', *TRAIN, *cluster, *extra,
                                       f'--config.data_dir={data_dir}'], cwd=root, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    try:
        deadline = time.time() + 400
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            if any(p.poll() for p in procs):  # one failed: the other would wait for it in a collective
                break
            time.sleep(0.5)
        for p in procs:
            if p.poll() is None:
                p.kill()
        return [(p.returncode, *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _params(workdir):
    import vitjax
    from vitjax.io import flatten
    return flatten(vitjax.load(workdir / 'model')[1]['params'])


@pytest.mark.slow
def test_train_py_on_two_processes(tmp_path):
    """One set of run files; the step count of one process; params identical across the processes and equal
    to one process reading the same shards within the bounds above; SIGTERM to one process stops both at the
    same step with a checkpoint, and --resume of both ends bit-exact on the uninterrupted run's params."""
    data_dir = str(tmp_path / 'tfds')
    (rc, out, err), = _train_py(tmp_path / 'one', data_dir, 1, 4)
    assert rc == 0, err[-3000:]
    runs = _train_py(tmp_path / 'two', data_dir, 2, 2)
    for rc, out, err in runs:
        assert rc == 0, err[-3000:]
        assert 'differ between processes' not in err
    assert 'devices: 4 x cpu (cpu), 2 on process 1 of 2' in runs[1][1]
    one, two = (json.loads((tmp_path / d / 'summary.json').read_text()) for d in ('one', 'two'))
    assert one['steps'] == two['steps'] == 6  # ceil(0.25 * 1437 / 64), not twice that
    assert two['processes'] == 2 and two['params_sha256']  # a digest only when both processes agree on it
    assert set(os.listdir(tmp_path / 'two')) == RUN_FILES  # process 0's files, once (no lock left behind)
    lines = (tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(x)['step'] for x in lines if '"train"' in x] == [2, 4, 6]
    assert len(os.listdir(tmp_path / 'two' / 'tensorboard')) == 1
    a, b = _params(tmp_path / 'one'), _params(tmp_path / 'two')
    assert a.keys() == b.keys()
    for k in a:
        atol = 4 * 2e-3 if k.endswith("attn/key/bias") else 1e-6  # as in the test above (the default lr 2e-3)
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=atol, err_msg=k)

    stopped = _train_py(tmp_path / 'cut', data_dir, 2, 2, faults={1: 'sigterm_at=3'})
    for rc, out, err in stopped:
        assert rc == 0, err[-3000:]
    assert 'received SIGTERM: stopped after step 4' in stopped[1][1]
    assert 'another process was signalled: stopped after step 4' in stopped[0][1]
    assert sorted(os.listdir(tmp_path / 'cut' / 'checkpoints')) == ['2', '4']
    resumed = _train_py(tmp_path / 'cut', data_dir, 2, 2, '--resume')
    for rc, out, err in resumed:
        assert rc == 0, err[-3000:]
    assert json.loads((tmp_path / 'cut' / 'summary.json').read_text())['params_sha256'] == two['params_sha256']


def _cluster_py(workdir, per_process_args, timeout=120):
    """train.py as len(per_process_args) processes, each with its own extra arguments (its cluster flags
    included) -> [(rc, stdout, stderr)]; every process is killed by `timeout`."""
    root = os.path.dirname(HERE)
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2')
    procs = [subprocess.Popen([sys.executable, 'train.py', f'--workdir={workdir}', *TRAIN, *args,
                               f'--config.data_dir={workdir}-tfds'], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for args in per_process_args]
    try:
        deadline = time.time() + timeout
        while any(p.poll() is None for p in procs) and time.time() < deadline:
            time.sleep(0.5)
        for p in procs:
            if p.poll() is None:
                p.kill()
        return [(p.returncode, *p.communicate()) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _cluster(port, i, n=2):
    return ['--config.distributed=True', f'--config.coordinator_address=127.0.0.1:{port}',
            f'--config.num_processes={n}', f'--config.process_id={i}']


@pytest.mark.slow
def test_processes_with_different_settings_are_refused_before_step_1(tmp_path):
    """A different lr (replicas would drift apart) and a different step count (a collective mismatch minutes
    later): every process exits 2 at start-up naming each difference, and nothing is trained or written. (Both
    wait up to 10**20 s for each other: more than jax takes, which once died of a TypeError.)"""
    port, wait = _free_port(), f'--config.distributed_timeout={10**20}'
    runs = _cluster_py(tmp_path / 'w', [[*_cluster(port, 0), '--config.lr=1e-3', '--config.total_steps=8', wait],
                                        [*_cluster(port, 1), '--config.lr=2e-3', '--config.total_steps=9', wait]])
    for rc, out, err in runs:
        assert rc == 2, err[-3000:]
        assert 'the processes of this run were started with different settings' in err
        assert '--config.lr: process 0 has 0.001, process 1 has 0.002' in err
        assert '--config.total_steps: process 0 has 8, process 1 has 9' in err
        assert 'Traceback' not in err
    assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_two_processes_both_given_process_id_0(tmp_path):
    """The second process 0 on a host is told at once (exit 2, what is wrong), instead of both waiting for
    jax's timeout and dying of SIGABRT; the first says how long it waits, and that wait is a setting: when it is
    up, the first ends with one line naming the process that never joined (exit 1), not jax's C++ abort."""
    port, t0 = _free_port(), time.time()
    runs = _cluster_py(tmp_path / 'w', [[*_cluster(port, 0), '--config.distributed_timeout=5']] * 2, timeout=90)
    told = [r for r in runs if r[0] == 2]
    assert len(told) == 1, [r[2][-2000:] for r in runs]
    rc, out, err = told[0]
    assert f'already runs as process 0 with a coordinator on port {port}' in err, err[-3000:]
    assert 'give each process its own --config.process_id' in err and 'Traceback' not in err
    waiting = next(r for r in runs if r is not told[0])
    assert 'process 0 of 2, waiting up to 5 s for all of them' in waiting[1]
    assert time.time() - t0 < 80  # the waiting one gave up after its 5 s, not jax's default 300
    assert waiting[0] == 1, (waiting[0], waiting[2][-3000:])  # an exit status, not SIGABRT (-6)
    assert 'Check failure' not in waiting[2] and '*** ' not in waiting[2] and 'Traceback' not in waiting[2]
    assert waiting[2].rstrip().splitlines()[-1] == (
        f'error: jax.distributed: process 1 never joined the coordinator at 127.0.0.1:{port} within 5 s: start '
        'every process with the same --config.coordinator_address and its own --config.process_id (0 to 1), or '
        'raise --config.distributed_timeout'), waiting[2][-3000:]
    assert waiting[2].count('never joined') == 1


@pytest.mark.slow
def test_a_process_whose_coordinator_never_comes_ends_with_one_line(tmp_path):
    """Process 1 started alone: when --config.distributed_timeout is up it says who it waited for (exit 1),
    instead of dying of jax's C++ abort after a stack trace."""
    port = _free_port()
    (rc, out, err), = _cluster_py(tmp_path / 'w', [[*_cluster(port, 1), '--config.distributed_timeout=5']], timeout=90)
    assert rc == 1, (rc, err[-3000:])
    assert 'Check failure' not in err and '*** ' not in err and 'Traceback' not in err, err[-3000:]
    assert err.rstrip().splitlines()[-1] == (
        f'error: jax.distributed: not all 2 processes met at the coordinator 127.0.0.1:{port} (process 0 serves it) '
        'within 5 s: start every process with the same --config.coordinator_address and its own '
        '--config.process_id (0 to 1), or raise --config.distributed_timeout')
    assert not (tmp_path / 'w').exists()
