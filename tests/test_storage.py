"""gs:// workdirs (vitjax/storage.py, the lease lock in vitjax/train/workdir.py) against a local GCS emulator: the
run files, the lock, `vitjax.load` of a gs:// model, and train.py itself stopped and resumed on a bucket; and
the local lock given what a user or another tool left in its place."""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import vitjax
from vitjax import storage
from vitjax.train import workdir

BUCKET = 'gs://vitjax-test'


@pytest.fixture(scope='module')
def gcs(tmp_path_factory):
    """An in-memory GCS on localhost; every client here and in train.py subprocesses is pointed at it: epath
    through gcsfs (EPATH_USE_TF=false: TensorFlow's GCS has no endpoint setting), orbax's arrays through
    tensorstore."""
    with socket.socket() as s:
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp('gcs') / 'emulator.log', 'w')
    server = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), 'gcs_emulator.py'), 'start',
                               '--host=localhost',
                               f'--port={port}', '--in-memory', '--default-bucket=vitjax-test', '-q'],
                              stdout=log, stderr=log)
    url = f'http://localhost:{port}'
    for _ in range(200):
        try:
            socket.create_connection(('localhost', port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    env = dict(STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url, EPATH_USE_TF='false',
               GOOGLE_CLOUD_PROJECT='vitjax-test')
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _epath_backend_choice_forgotten()
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _epath_backend_choice_forgotten()
    server.kill()
    server.wait()
    log.close()


def _epath_backend_choice_forgotten():
    """epath reads EPATH_USE_TF once per process (a cached function): an earlier test in this worker may already
    have made it choose TensorFlow's GCS, which cannot reach the emulator."""
    from etils.epath import gpath
    getattr(getattr(gpath, '_is_tf_installed', None), 'cache_clear', lambda: None)()


def names(url):
    import fsspec
    fsspec.filesystem('gs', finalize_on_close=True).invalidate_cache()  # epath's gcsfs caches listings
    p = storage.epath.Path(url)
    return sorted(x.name for x in p.iterdir()) if p.exists() else []


def test_lease_lock_refuses_a_live_run_and_takes_over_a_dead_ones(gcs):
    run = f'{BUCKET}/lock'
    # a lease 15 beats long: a 1 s lease (5 beats) was once taken over from a live run when the two busy test
    # workers starved its heartbeat thread and the emulator for over a second
    first = workdir.LeaseLock(run, lease=3.0, every=0.2)
    time.sleep(3.5)  # longer than the lease: the heartbeat thread keeps it alive however busy the run is
    with pytest.raises(workdir.WorkdirInUse, match=r'in use by another run \(pid \d+ on .* alive \d+ s ago'):
        workdir.LeaseLock(run, lease=3.0)
    first.release()
    assert names(run) == []
    dead = workdir.LeaseLock(run, lease=0.5, every=3600)  # never beats again: a run killed with -9
    time.sleep(1.0)
    second = workdir.LeaseLock(run, lease=0.5, every=3600)
    dead.release()  # not its lock any more: it must not delete the new holder's
    assert names(run) == ['train.lock'] and json.loads(storage.epath.Path(run, 'train.lock').read_text())[
        'token'] == second.token
    second.release()


# a lock object vitjax did not write as it writes one -> what the refusal says is wrong with it
MALFORMED_LOCKS = {'{"heartbeat": "yesterday", "pid": 1}': 'has heartbeat "yesterday", not a time',
                   'not json': 'is not JSON', b'\xff\xfe{}': 'is not JSON', '': 'is not JSON',
                   '[1, 2]': 'holds [1, 2], not a JSON object', '"x"': 'holds "x", not a JSON object',
                   '{"pid": 1}': 'has no heartbeat', '{"heartbeat": true}': 'has heartbeat true, not a time',
                   '{"heartbeat": NaN}': 'has heartbeat NaN, not a time', '{"heartbeat": -1}': 'not a time',
                   '{"heartbeat": Infinity}': 'has heartbeat Infinity, a time in the future',
                   '{"heartbeat": 1e300}': 'a time in the future', '{"heartbeat": 1%s}' % ('0' * 400): 'future'}


def test_a_malformed_lease_lock_is_refused_while_fresh_then_taken_over(gcs, capsys):
    """Dated by the store's time of writing: refused (naming what is wrong) while a run could still hold it,
    taken over (and said so) once its lease is up, like a lock whose run stopped beating."""
    runs = {f'{BUCKET}/malformed/{i}': text for i, text in enumerate(MALFORMED_LOCKS)}
    for run, text in runs.items():  # the store dates them in whole seconds: refused for 3 s at least
        lock = storage.epath.Path(run, 'train.lock')
        lock.write_bytes(text) if isinstance(text, bytes) else lock.write_text(text)
    written, lease = time.time(), 4.0
    for run, text in runs.items():
        with pytest.raises(workdir.WorkdirInUse, match=r'in use by another run \(its lock .*/train.lock (.*), last '
                           r'written \d+ s ago\); wait .* gives it up \d+ s from now') as e:
            workdir.LeaseLock(run, lease=lease)
        assert MALFORMED_LOCKS[text] in str(e.value), str(e.value)
    time.sleep(max(0.0, written + lease + 0.2 - time.time()))
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(len(runs)) as pool:  # each taking-over waits 0.5 s to re-read its own write
        locks = list(pool.map(lambda run: workdir.LeaseLock(run, lease=lease, every=3600), runs))
    for run, lock in zip(runs, locks):
        assert json.loads(storage.epath.Path(run, 'train.lock').read_text())['token'] == lock.token
        lock.release()
        assert names(run) == []
    err = capsys.readouterr().err
    assert err.count('took over the lock of a run that stopped (its lock ') == len(runs), err


def test_a_local_run_file_that_is_a_symlink_is_refused_and_its_target_untouched(tmp_path):
    """train.lock (truncated and rewritten in place) or summary.json (rewritten at the end) as a link to a
    user's file: refused before anything is written, instead of overwriting the file it points to."""
    mine = tmp_path / 'mine.txt'
    mine.write_text('my notes')
    for name in ('train.lock', 'summary.json'):
        run = tmp_path / name
        run.mkdir()
        (run / name).symlink_to(mine)
        with pytest.raises(ValueError, match=f'{run}: {name} is a symbolic link \\(to {mine}\\), which a run would '
                           'write through; remove the link'):
            workdir.check_ours(str(run))
    with pytest.raises(workdir.WorkdirInUse, match=r'train.lock is a symbolic link \(to .*mine.txt\), not a lock'):
        workdir.Lock(str(tmp_path / 'train.lock'))
    assert mine.read_text() == 'my notes' and (tmp_path / 'train.lock' / 'train.lock').is_symlink()


def test_a_held_local_lock_with_undecodable_contents_is_reported(tmp_path):
    """Its holder is shown as far as it reads, not a UnicodeDecodeError."""
    import fcntl
    (tmp_path / 'train.lock').write_bytes(b'pid 7 \xff\xfe')
    fd = os.open(tmp_path / 'train.lock', os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another open file description: as another process would hold it
        with pytest.raises(workdir.WorkdirInUse, match=r'in use by another run \(pid 7 \ufffd\ufffd\); wait'):
            workdir.Lock(str(tmp_path))
    finally:
        os.close(fd)
    assert (tmp_path / 'train.lock').read_bytes() == b'pid 7 \xff\xfe'


def test_model_published_to_gcs_loads_back(gcs, tmp_path):
    model, variables = vitjax.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8, depth=1,
                                           num_classes=5, rng=__import__('jax').random.PRNGKey(0))
    files = storage.RunFiles(f'{BUCKET}/pub')
    vitjax.save(files.path('model'), model, variables)
    files.publish_model()
    assert names(f'{BUCKET}/pub/model') == ['config.json', 'params.safetensors']
    loaded, got = vitjax.load(f'{BUCKET}/pub/model')
    import jax
    assert loaded.num_classes == 5 and all(np.array_equal(a, b) for a, b in
                                           zip(jax.tree.leaves(variables), jax.tree.leaves(got)))
    assert vitjax.io.read_dir_config(f'{BUCKET}/pub/model')['model']['depth'] == 1
    files.close()
    assert not os.path.exists(files.local)
    with pytest.raises(FileNotFoundError, match=f'{BUCKET}/nothing/config.json not found'):
        vitjax.load(f'{BUCKET}/nothing')


@pytest.mark.slow
def test_train_py_on_a_bucket_stops_resumes_and_matches_a_local_run(gcs, tmp_path):
    from test_train import QUICK, run_train
    data_dir = str(tmp_path / 'tfds')
    tmp = tmp_path / 'tmp'  # train.py's staging directories: none may be left behind
    tmp.mkdir()
    os.environ['TMPDIR'] = str(tmp)
    tempfile.tempdir = None  # train.py runs in this process (tests/trainrun.py): it reads TMPDIR anew
    try:
        local = run_train(tmp_path / 'local', *QUICK, data_dir=data_dir)
        assert local.returncode == 0, local.stderr[-3000:]
        run = f'{BUCKET}/runs/quick'
        first = run_train(run, *QUICK, '--stop_after=30', data_dir=data_dir)
        assert first.returncode == 0, first.stderr[-3000:]
        assert names(run) == ['checkpoints', 'config.json', 'metrics.jsonl', 'tensorboard']
        assert names(f'{run}/checkpoints') == ['20', '30']
        nowhere = run_train('gs://no-such-bucket/run', *QUICK, data_dir=data_dir)
        assert nowhere.returncode == 2 and 'error: cannot' in nowhere.stderr and 'no-such-bucket' in nowhere.stderr
        again = run_train(run, *QUICK, data_dir=data_dir)  # without --resume: refused, nothing touched
        assert again.returncode == 2 and 'already holds checkpoints (steps 20, 30)' in again.stderr
        with workdir_locked(run):
            busy = run_train(run, *QUICK, '--resume', data_dir=data_dir)
        assert busy.returncode == 2 and 'is in use by another run' in busy.stderr
        second = run_train(run, *QUICK, '--resume', data_dir=data_dir)
        assert second.returncode == 0, second.stderr[-3000:]
        assert 'resumed from step 30' in second.stdout and f'model: {run}/model' in second.stdout
    finally:
        os.environ.pop('TMPDIR')
        tempfile.tempdir = None
    assert names(run) == ['checkpoints', 'config.json', 'curves.png', 'metrics.jsonl', 'model', 'summary.json',
                          'tensorboard']  # the lock released
    assert names(f'{run}/checkpoints') == ['30', '40', '60']  # keep_checkpoints 3
    assert [n for n in os.listdir(tmp) if n.startswith('vitjax-')] == []  # (tfds leaves a tmp*tfds of its own)
    assert not os.path.exists(os.path.join(os.getcwd(), 'gs:'))
    read = lambda text: [{k: r[k] for k in ('step', 'split', 'loss', 'accuracy', 'lr', 'grad_norm') if k in r}
                         for r in map(json.loads, text.splitlines())]
    # the stopped run's lines, then the resumed run's: the uninterrupted run's file, line for line
    assert read(storage.epath.Path(run, 'metrics.jsonl').read_text()) == \
        read((tmp_path / 'local' / 'metrics.jsonl').read_text())
    assert len(names(f'{run}/tensorboard')) == 2  # one events file per invocation
    summary = json.loads(storage.epath.Path(run, 'summary.json').read_text())
    assert summary['steps'] == 60
    import jax
    _, a = vitjax.load(f'{run}/model')
    _, b = vitjax.load(tmp_path / 'local' / 'model')
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    # the model on the bucket is a starting point as it stands
    tune = run_train(tmp_path / 'tune', *QUICK, '--config.total_steps=20', f'--config.init={run}/model',
                     data_dir=data_dir)
    assert tune.returncode == 0 and 'test accuracy' in tune.stdout, tune.stderr[-3000:]


class workdir_locked:
    """A live run's lock on a URL workdir, held by this process."""

    def __init__(self, url):
        self.url = url

    def __enter__(self):
        self.lock = workdir.LeaseLock(self.url)

    def __exit__(self, *exc):
        self.lock.release()


def test_a_bucket_prefix_holding_other_files_is_not_a_workdir(gcs):
    storage.epath.Path(f'{BUCKET}/theirs/notes.txt').write_text('not ours')
    with pytest.raises(ValueError, match=r'gs://vitjax-test/theirs is not a vitjax run directory \(it holds notes.txt'):
        workdir.check_ours(f'{BUCKET}/theirs')
    workdir.check_ours(f'{BUCKET}/fresh')  # nothing there yet: a new run may start


def test_a_bucket_model_directory_behaves_like_the_local_one(gcs, tmp_path, capsys):
    """A subfolder in it (a user's notes, an eval run) and `vitjax predict --model gs://...`: what works on the
    local directory works on its copy in the bucket, and errors name the bucket's files, not a local copy's."""
    import jax
    from PIL import Image
    from vitjax import cli
    model = vitjax.registry.build_model('vit_tiny_patch16_224', 5, 32, patch_size=8, depth=1)
    rng = np.random.default_rng(0)  # random params without compiling an init
    variables = {'params': vitjax.io.unflatten({k: rng.standard_normal(s).astype(np.float32)
                                                for k, s in vitjax.io.param_shapes(model).items()})}
    files = storage.RunFiles(f'{BUCKET}/sub')
    local, url = files.path('model'), f'{BUCKET}/sub/model'
    vitjax.save(local, model, variables)
    os.makedirs(os.path.join(local, 'evals', 'v1'))
    open(os.path.join(local, 'evals', 'v1', 'notes.txt'), 'w').write('ours')
    files.publish_model()
    assert names(url) == ['config.json', 'evals', 'params.safetensors']
    (_, want), (_, got) = vitjax.load(local), vitjax.load(url)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    Image.fromarray(rng.integers(0, 255, (40, 30, 3), np.uint8)).save(tmp_path / 'x.png')
    assert cli.main(['predict', '--model', url, str(tmp_path / 'x.png'), '--json', '--top', '2']) == 0
    assert [len(r['top']) for r in json.loads(capsys.readouterr().out)] == [2]
    storage.epath.Path(url, 'params.safetensors').unlink()
    with pytest.raises(ValueError, match=f'cannot read {url}/params.safetensors: '):
        vitjax.load(url)
    files.close()


def test_a_bucket_model_prefix_of_user_files_is_refused_untouched(gcs):
    """runs/m/model/ in the bucket holds config.json, params.safetensors and notes.txt that vitjax did not
    write: train.py refuses the workdir as it refuses the same local layout, and every object stays."""
    root = f'{BUCKET}/runs/m'
    mine = {'config.json': '{"my": "model"}', 'params.safetensors': 'my weights', 'notes.txt': 'my notes'}
    for f, text in mine.items():
        storage.epath.Path(f'{root}/model/{f}').write_text(text)
    with pytest.raises(ValueError, match=r'model holds config.json, notes.txt, params.safetensors, which vitjax did'):
        workdir.check_model_url(f'{root}/model')
    cmd = [sys.executable, 'train.py', f'--workdir={root}', '--config.total_steps=5', '--config.warmup_steps=1']
    proc = subprocess.run(cmd, cwd=os.path.dirname(os.path.dirname(__file__)), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert 'vitjax replaces only a model directory it wrote' in proc.stderr
    assert names(root) == ['model'] and names(f'{root}/model') == sorted(mine)
    assert {f: storage.epath.Path(f'{root}/model/{f}').read_text() for f in mine} == mine
    workdir.check_model_url(f'{BUCKET}/runs/new/model')  # nothing there: a run may write it
