"""Training faults: NaN/Inf, SIGTERM/SIGINT, kill -9 during a checkpoint write, unwritable or full disks.
Each test injects the fault into a real `python train.py` run and shows that nothing is lost."""
import json
import os
import shutil
import signal
import time

import numpy as np
import pytest

import vitjax
from test_train import QUICK, records
from test_train import run_train as train

pytestmark = pytest.mark.slow  # every test runs train.py, most of them twice

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
    from vitjax.train import trainer as script
    import shutil
    monkeypatch.setattr(shutil, 'disk_usage', lambda p: shutil._ntuple_diskusage(10 << 30, 10 << 30, 1 << 20))
    with pytest.raises(OSError, match='has 1 MiB free; checkpoints and the final model need about 20 MiB'):
        script.check_free_space(str(tmp_path), 20 << 20)
    script.check_free_space(str(tmp_path), 1 << 19)


def _strict(text):
    def refuse(c):
        raise ValueError(f'not JSON: {c}')
    return json.loads(text, parse_constant=refuse)


def test_kill9_during_first_checkpoint_leaves_a_usable_workdir(tmp_path, data_dir, reference):
    """A run killed while its first checkpoint is written leaves only orbax's temporary directory. Both a plain
    rerun and --resume (what a preemptible job script always passes) start again at step 0, as they should."""
    proc = train(tmp_path / 'r', *QUICK, '--config.total_steps=20', '--config.warmup_steps=5', data_dir=data_dir,
                 fault='kill_in_save=20')
    assert proc.returncode == -signal.SIGKILL
    ckpts = tmp_path / 'r' / 'checkpoints'
    for name in os.listdir(ckpts):  # the write cut off, whether or not orbax got further before the kill
        os.rename(ckpts / name, ckpts / f'{name}.orbax-checkpoint-tmp-1') if name.isdigit() else None
    (ckpts / '20.orbax-checkpoint-tmp-1' / 'state').mkdir(parents=True, exist_ok=True)
    again = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert 'no complete checkpoint' in again.stdout and 'starting from step 0' in again.stdout
    assert sorted(os.listdir(ckpts)) == ['20', '40', '60']  # the leftover is gone
    same_run(tmp_path / 'r', reference)
    shutil.rmtree(ckpts)
    ckpts.mkdir()
    (ckpts / '20.orbax-checkpoint-tmp-1').mkdir()
    plain = train(tmp_path / 'r', *QUICK, data_dir=data_dir)  # no --resume: nothing to continue, nothing refused
    assert plain.returncode == 0, plain.stderr[-3000:]


def test_second_run_on_a_live_workdir_is_refused_and_stale_locks_are_taken_over(tmp_path, data_dir):
    first = train(tmp_path / 'r', *QUICK, '--config.total_steps=2000', data_dir=data_dir, wait=False)
    metrics = tmp_path / 'r' / 'metrics.jsonl'
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
        time.sleep(0.05)
    config = (tmp_path / 'r' / 'config.json').read_bytes()
    for args in ([], ['--resume']):
        second = train(tmp_path / 'r', *QUICK, *args, data_dir=data_dir)
        assert second.returncode == 2, second.stderr[-3000:]
        assert f'is in use by another run (pid {first.pid} on' in second.stderr
    assert (tmp_path / 'r' / 'config.json').read_bytes() == config
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert not (tmp_path / 'r' / 'train.lock').exists()
    # What kill -9 leaves: a lock file nobody holds. The next run takes it over.
    (tmp_path / 's').mkdir()
    (tmp_path / 's' / 'train.lock').write_text('pid 999999 on elsewhere since 2026-01-01 00:00:00\n')
    proc = train(tmp_path / 's', *QUICK, '--config.total_steps=20', '--config.warmup_steps=5', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope='module')
def stopped_at_40(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp('stop') / 'run'
    proc = train(workdir, *QUICK, '--stop_after=40', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, data_dir, reference,
                                                                       stopped_at_40, damage):
    """Truncated files make orbax fail; flipped bytes inside the array data are restored by orbax without
    complaint and only the checksum saved with the checkpoint sees them. Either way: step 20, said so."""
    shutil.copytree(stopped_at_40, tmp_path / 'r')
    data = sorted((tmp_path / 'r' / 'checkpoints' / '40' / 'state').rglob('*'),
                  key=lambda p: p.stat().st_size if p.is_file() else -1)[-1]
    raw = bytearray(data.read_bytes())
    if damage == 'truncate':
        data.write_bytes(raw[:len(raw) // 2])
    else:
        raw[len(raw) // 2] ^= 0xFF
        data.write_bytes(raw)
    resumed = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'checkpoint 40 is damaged' in resumed.stdout and 'resuming from step 20' in resumed.stdout
    if damage == 'flip':
        assert 'do not match the checksum' in resumed.stdout
    assert (tmp_path / 'r' / 'checkpoints' / '40.corrupt').is_dir()  # kept for inspection, not deleted
    same_run(tmp_path / 'r', reference)


def test_no_intact_checkpoint_is_an_error_that_renames_nothing(tmp_path, data_dir, stopped_at_40):
    shutil.copytree(stopped_at_40, tmp_path / 'r')
    for step in ('20', '40'):
        for f in (tmp_path / 'r' / 'checkpoints' / step / 'state').rglob('*'):
            if f.is_file() and f.stat().st_size > 1000:
                f.write_bytes(f.read_bytes()[:100])
    resumed = train(tmp_path / 'r', *QUICK, '--resume', data_dir=data_dir)
    assert resumed.returncode == 1 and 'no intact checkpoint' in resumed.stderr
    assert 'step 40:' in resumed.stderr and 'step 20:' in resumed.stderr
    assert 'Traceback' not in resumed.stderr
    assert sorted(os.listdir(tmp_path / 'r' / 'checkpoints')) == ['20', '40']


@pytest.mark.parametrize('args, refused', [
    (['--config.batch_size=32'], 'batch_size: 64 -> 32'),
    (['--config.model=vit_small_patch16_224'], "model: 'vit_tiny_patch16_224' -> 'vit_small_patch16_224'"),
    (['--config.model_overrides.depth=2'], 'model_overrides.depth: 1 -> 2'),
])
def test_resume_with_a_changed_config_is_refused_before_anything_is_written(tmp_path, data_dir, stopped_at_40,
                                                                            args, refused):
    shutil.copytree(stopped_at_40, tmp_path / 'r')
    before = {p: p.read_bytes() for p in (tmp_path / 'r').rglob('*') if p.is_file()}
    proc = train(tmp_path / 'r', *QUICK, *args, '--resume', data_dir=data_dir)
    assert proc.returncode == 2 and refused in proc.stderr, proc.stderr[-3000:]
    assert '--config.allow_changes=' in proc.stderr
    after = {p: p.read_bytes() for p in (tmp_path / 'r').rglob('*') if p.is_file()}
    assert after == before


def test_resume_with_named_changes_goes_on_and_records_them(tmp_path, data_dir, stopped_at_40):
    shutil.copytree(stopped_at_40, tmp_path / 'r')
    proc = train(tmp_path / 'r', *QUICK, '--config.lr=5e-4', '--config.log_every=5', '--resume',
                 '--config.allow_changes=lr', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed from step 40' in proc.stdout and "lr: 0.002 -> 0.0005" in proc.stdout
    change = _strict((tmp_path / 'r' / 'config_changes.jsonl').read_text().splitlines()[-1])
    assert change['changes'] == {'lr': {'from': 2e-3, 'to': 5e-4}, 'log_every': {'from': 10, 'to': 5},
                                 'allow_changes': {'from': '', 'to': 'lr'}}
    assert _strict((tmp_path / 'r' / 'config.json').read_text())['lr'] == 5e-4


def test_every_step_skipped_saves_no_model(tmp_path, data_dir):
    """nan_policy='skip' with no update ever applied: an error, not an initial model presented as trained."""
    proc = train(tmp_path / 'r', *QUICK, '--config.total_steps=6', '--config.warmup_steps=1',
                 '--config.nan_policy=skip', data_dir=data_dir, fault='nan_at=1,2,3,4,5,6')
    assert proc.returncode == 1 and 'all 6 steps were non-finite and skipped' in proc.stderr
    assert not (tmp_path / 'r' / 'model').exists() and not (tmp_path / 'r' / 'summary.json').exists()
    for line in (tmp_path / 'r' / 'metrics.jsonl').read_text().splitlines():
        _strict(line)


def test_metrics_and_summary_are_strict_json(tmp_path):
    from vitjax.train.metrics import MetricWriter, strict_json
    writer = MetricWriter(str(tmp_path))
    writer.write(1, 'eval', loss=float('nan'), accuracy=0.5, top5=float('inf'))
    writer.close()
    assert _strict((tmp_path / 'metrics.jsonl').read_text()) == {'step': 1, 'split': 'eval', 'loss': None,
                                                                 'accuracy': 0.5, 'top5': None}
    assert _strict(strict_json({'a': [1.0, float('-inf')], 'b': {'c': float('nan')}})) == {'a': [1.0, None],
                                                                                             'b': {'c': None}}


def test_workdir_holding_other_files_is_refused_untouched(tmp_path, data_dir):
    """`--workdir .` in a project: a run writes config.json, metrics.jsonl, model/ there and replaces older
    ones, so a directory holding anything else is refused before a byte is written."""
    own = tmp_path / 'project'
    own.mkdir()
    (own / 'config.json').write_text('{"my": "settings"}')
    (own / 'metrics.jsonl').write_text('my own numbers\n')
    for extra in ('notes.txt', None):
        if extra:
            (own / extra).write_text('x')
        before = {p.name: p.read_bytes() for p in own.iterdir()}
        proc = train(own, *QUICK, data_dir=data_dir)
        assert proc.returncode == 2 and 'is not a vitjax run directory' in proc.stderr, proc.stderr[-2000:]
        assert {p.name: p.read_bytes() for p in own.iterdir()} == before
        if extra:
            (own / extra).unlink()  # then: only names a run writes, but config.json is not a training config
    bad = train(own, *QUICK, '--stop_after=-1', data_dir=data_dir)
    assert bad.returncode == 2 and '--stop_after must be >= 0' in bad.stderr
    run = tmp_path / 'run'  # a run directory whose model/ holds a user's file: refused before training
    (run / 'model').mkdir(parents=True)
    (run / 'model' / 'mine.txt').write_text('x')
    (run / '.model.old').mkdir()  # what a killed final save may leave: ours, not in the way
    proc = train(run, *QUICK, data_dir=data_dir)
    assert proc.returncode == 2 and 'vitjax replaces only a model directory it wrote' in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == ['.model.old', 'model']


def _tiny_model_dir(path, **kw):
    model, variables = vitjax.create_model('vit_tiny_patch16_224', depth=1, num_classes=10, **kw)
    vitjax.save(path, model, variables, name='vit_tiny_patch16_224')
    return {p.name: p.read_bytes() for p in path.iterdir()}


def test_init_inside_the_runs_own_workdir_is_refused(tmp_path, data_dir):
    """A finished run whose checkpoints were deleted, started again from its own model/: the run would replace
    the very model it starts from. Refused before a byte is written, as convert refuses --out = the input."""
    run = tmp_path / 'run'
    (run / 'model').mkdir(parents=True)
    before = _tiny_model_dir(run / 'model')
    for init in (run / 'model', run):
        proc = train(run, *QUICK, f'--config.init={init}', data_dir=data_dir)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f'--config.init {init} is inside this run\'s workdir {run}' in proc.stderr
        assert sorted(p.name for p in run.iterdir()) == ['model']
        assert {p.name: p.read_bytes() for p in (run / 'model').iterdir()} == before


def test_a_non_square_model_is_refused_before_compiling(tmp_path, data_dir):
    """A dynamic_img_size model converted at 32x48: the pipeline makes square images, so the step compiled and
    memory-checked for 32x48 would be fed 32x32 and compiled again. Refused with the way out; that way out
    (--config.image_size) then trains."""
    _tiny_model_dir(tmp_path / 'm', img_size=(32, 48), dynamic_img_size=True)
    proc = train(tmp_path / 'r', *QUICK, f'--config.init={tmp_path / "m"}', data_dir=data_dir)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "the model's input size is 32x48 (HxW)" in proc.stderr and '--config.image_size=N' in proc.stderr
    assert not (tmp_path / 'r' / 'checkpoints').exists()
    proc = train(tmp_path / 'ok', *QUICK, '--config.total_steps=20', '--config.image_size=32',
                 f'--config.init={tmp_path / "m"}', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / 'ok' / 'summary.json').read_text())
    assert summary['compilations'] == {'train': 1, 'eval': 1}
