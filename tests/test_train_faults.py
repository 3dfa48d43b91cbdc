"""Training faults: NaN/Inf, SIGTERM/SIGINT, kill -9 during a checkpoint write, unwritable or full disks.
Each test injects the fault into a real `python train.py` run and shows that nothing is lost."""
import os
import signal
import time

import numpy as np
import pytest

import vitjax
from test_train import QUICK, records
from test_train import run_train as train

STRIP = ('step', 'loss', 'accuracy', 'lr', 'grad_norm')


def strip(rs):
    return [{k: r[k] for k in STRIP if k in r} for r in rs]


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
    """The uninterrupted run every faulty run must reproduce."""
    workdir = tmp_path_factory.mktemp('ref') / 'run'
    proc = train(workdir, *QUICK, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def same_run(a, b, stopped=None):
    """Same logged metrics and final params. A stop between log steps leaves the next logged train means over
    a shorter window (the steps after the resume), so that one record is compared on step and lr only."""
    log_every = 10
    partial = lambda r: stopped is not None and stopped % log_every and r['step'] == (stopped // log_every + 1) * 10
    cut = lambda rs: [{k: v for k, v in r.items() if not partial(r) or k in ('step', 'lr')} for r in strip(rs)]
    assert cut(records(a, 'train')) == cut(records(b, 'train'))
    assert strip(records(a, 'eval')) == strip(records(b, 'eval'))
    import jax
    (_, va), (_, vb) = vitjax.load(a / 'model'), vitjax.load(b / 'model')
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)))


def test_nan_stop_keeps_last_good_checkpoint(tmp_path, data_dir):
    proc = train(tmp_path / 'r', *QUICK, data_dir=data_dir, fault='nan_at=25')
    assert proc.returncode == 1
    assert 'non-finite loss or gradients at step 25' in proc.stderr
    assert 'the last good checkpoint is step 20' in proc.stderr
    assert sorted(os.listdir(tmp_path / 'r' / 'checkpoints')) == ['20']  # nothing written after the bad step
    assert not (tmp_path / 'r' / 'summary.json').exists()


def test_nan_skip_counts_and_finishes(tmp_path, data_dir):
    proc = train(tmp_path / 'r', *QUICK, '--config.nan_policy=skip', data_dir=data_dir, fault='nan_at=5,6,25')
    assert proc.returncode == 0, proc.stderr[-3000:]
    train_recs = records(tmp_path / 'r', 'train')
    assert [r['skipped_steps'] for r in train_recs] == [2, 2, 3, 3, 3, 3]
    assert all(np.isfinite(r['loss']) for r in train_recs)
    assert records(tmp_path / 'r', 'eval')[-1]['accuracy'] > 0.5
    assert 'update(s) skipped' in proc.stdout
    _, variables = vitjax.load(tmp_path / 'r' / 'model')
    import jax
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables))


def test_sigterm_checkpoints_and_resume_is_exact(tmp_path, data_dir, reference):
    """A real SIGTERM delivered during step 25 (between log steps): the step finishes, a checkpoint is
    written, exit 0; --resume ends exactly where the uninterrupted run does."""
    proc = train(tmp_path / 'r', *QUICK, data_dir=data_dir, fault='sigterm_at=25')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'received SIGTERM: stopped after step 25 of 60' in proc.stdout
    assert sorted(int(s) for s in os.listdir(tmp_path / 'r' / 'checkpoints')) == [20, 25]
    assert not (tmp_path / 'r' / 'summary.json').exists()
    resumed = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert resumed.returncode == 0 and 'resumed from step 25' in resumed.stdout, resumed.stderr[-3000:]
    same_run(tmp_path / 'r', reference, stopped=25)


def test_sigint_stops_cleanly(tmp_path, data_dir):
    proc = train(tmp_path / 'r', *QUICK, '--config.total_steps=2000', data_dir=data_dir, wait=False)
    metrics = tmp_path / 'r' / 'metrics.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert 'received SIGINT: stopped after step' in out and 'continue with --resume' in out
    assert os.listdir(tmp_path / 'r' / 'checkpoints')


def test_kill9_during_checkpoint_write(tmp_path, data_dir, reference):
    proc = train(tmp_path / 'r', *QUICK, data_dir=data_dir, fault='kill_in_save=40')
    assert proc.returncode == -signal.SIGKILL
    left = os.listdir(tmp_path / 'r' / 'checkpoints')
    resumed = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step = int(resumed.stdout.split('resumed from step ')[1].split()[0])
    assert step in (20, 40)  # 40 only if orbax finished writing before the kill; never a partial 40
    if '40.orbax-checkpoint-tmp' in left:  # (what happens here: the write was cut off)
        assert step == 20
    same_run(tmp_path / 'r', reference)


def test_partial_checkpoint_directory_is_ignored(tmp_path, data_dir, reference):
    """What a kill in the middle of orbax's write leaves behind: a temporary directory, never the latest."""
    proc = train(tmp_path / 'r', *QUICK, '--stop_after=20', data_dir=data_dir)
    assert proc.returncode == 0
    partial = tmp_path / 'r' / 'checkpoints' / '40.orbax-checkpoint-tmp'
    (partial / 'state').mkdir(parents=True)
    (partial / 'state' / 'junk').write_bytes(b'\x00' * 100)
    resumed = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert resumed.returncode == 0 and 'resumed from step 20' in resumed.stdout, resumed.stderr[-3000:]
    same_run(tmp_path / 'r', reference)


def test_unwritable_workdir(tmp_path, data_dir):
    (tmp_path / 'a_file').write_text('x')
    proc = train(tmp_path / 'a_file' / 'run', *QUICK, data_dir=data_dir)
    assert proc.returncode == 2 and 'cannot write to workdir' in proc.stderr


def test_disk_full_detected_before_training(monkeypatch, tmp_path):
    from vitjax import trainer as script
    import shutil
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OSError, match='has 1 MiB free; checkpoints and the final model need about 20 MiB'):
        script.check_free_space(str(tmp_path), 20 << 20)
    script.check_free_space(str(tmp_path), 1 << 19)
