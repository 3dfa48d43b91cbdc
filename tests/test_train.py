"""`python train.py` end to end on the embedded digits data: outputs, learning, exact resume, bad configs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import trainrun
import vitjax
from faults import FaultHooks

# every test here runs train.py (6-40 s each): the whole file is outside `make test-fast`
pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small and quick: one block, 60 steps; enough to see learning on digits.
QUICK = ['--config.model_overrides.depth=1', '--config.total_steps=60', '--config.warmup_steps=10',
         '--config.log_every=10', '--config.eval_every=20', '--config.checkpoint_every=20', '--config.batch_size=64']


def run_train(workdir, *args, data_dir, fault='', wait=True):
    """train.py with these arguments: in this process (tests/trainrun.py), or as a process of its own where the
    test needs one: wait=False (the Popen, to signal it) or a fault that kills or signals (`fault`: VITJAX_FAULT of
    tests/faults.py). --config FILE, if any, must come before every --config.field override."""
    argv = [f'--workdir={workdir}', *map(str, args), f'--config.data_dir={data_dir}']
    if wait and 'kill' not in fault and 'sigterm' not in fault:
        return trainrun.train(*argv, hooks=FaultHooks.parse(fault))
    env = dict(os.environ, VITJAX_FAULT=fault)
    cmd = [sys.executable, 'tests/faulty_train.py' if fault else 'train.py', *argv]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp('run') / 'quick'
    proc = run_train(workdir, *QUICK, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def records(workdir, split):
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        return [r for r in map(json.loads, f) if r['split'] == split]


def test_outputs(quick_run):
    workdir, proc = quick_run
    for name in ('config.json', 'metrics.jsonl', 'curves.png', 'summary.json', 'tensorboard', 'checkpoints',
                 'model'):
        assert os.path.exists(workdir / name), name
    summary = json.loads((workdir / 'summary.json').read_text())
    assert set(summary) >= {'test_accuracy', 'test_loss', 'steps', 'examples_seen', 'wall_s', 'img_per_s',
                            'devices'}
    assert summary['steps'] == 60 and summary['examples_seen'] == 60 * 64 and summary['test_examples'] == 360
    # 60 steps, 3 evals and the test eval (a padded last batch) each run one compiled program: no retracing
    assert summary['compilations'] == {'train': 1, 'eval': 1}
    assert 'test accuracy' in proc.stdout and 'curves.png' in proc.stdout
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['20', '40', '60']
    model, variables = vitjax.load(workdir / 'model')
    assert model.num_classes == 10 and model.depth == 1
    cfg = json.loads((workdir / 'model' / 'config.json').read_text())
    assert cfg['class_names'] == [str(i) for i in range(10)]
    import tensorflow as tf  # the TensorBoard events hold every logged scalar, tagged for the scalars plugin
    events = [e for f in sorted((workdir / 'tensorboard').iterdir())
              for e in tf.compat.v1.train.summary_iterator(str(f))]
    losses = {e.step: float(tf.make_ndarray(v.tensor)) for e in events for v in e.summary.value
              if v.tag == 'train/loss' and v.metadata.plugin_data.plugin_name == 'scalars'}
    assert losses == pytest.approx({r['step']: r['loss'] for r in records(workdir, 'train')})


def test_it_learns(quick_run):
    workdir, _ = quick_run
    train = records(workdir, 'train')
    evals = records(workdir, 'eval')
    assert [r['step'] for r in evals] == [20, 40, 60]
    assert train[-1]['loss'] < 0.75 * train[0]['loss']
    assert evals[-1]['accuracy'] > 0.5  # chance is 0.1
    summary = json.loads((workdir / 'summary.json').read_text())
    assert summary['test_accuracy'] == pytest.approx(evals[-1]['accuracy'])  # eval split == test split here


def test_resume_reproduces_uninterrupted_run(quick_run, tmp_path, data_dir):
    workdir, _ = quick_run
    part = tmp_path / 'part'
    first = run_train(part, *QUICK, '--stop_after=30', data_dir=data_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 'continue with --resume' in first.stdout and not (part / 'summary.json').exists()
    second = run_train(part, *QUICK, '--resume', data_dir=data_dir)
    assert second.returncode == 0, second.stderr[-3000:]
    assert 'resumed from step 30' in second.stdout
    assert json.loads((part / 'summary.json').read_text())['compilations'] == {'train': 1, 'eval': 1}
    keys = ('step', 'loss', 'accuracy', 'lr', 'grad_norm')
    strip = lambda rs: [{k: r[k] for k in keys if k in r} for r in rs]
    assert strip(records(part, 'train')) == strip(records(workdir, 'train'))
    assert strip(records(part, 'eval')) == strip(records(workdir, 'eval'))
    _, a = vitjax.load(part / 'model')
    _, b = vitjax.load(workdir / 'model')
    import jax
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize('args, message', [
    (['--config.warmup_steps=100', '--config.total_steps=50'], 'warmup_steps (100) must be < total_steps (50)'),
    (['--config.nan_policy=ignore'], "nan_policy must be one of 'stop', 'skip'"),
    (['--config.lr=nan', '--config.nan_policy=skip'], 'lr must be finite (got nan)'),
    (['--config.b1=1.0'], 'b1 must be in [0, 1)'),
    (['--config.batch_size=-8'], 'batch_size must be > 0 (got -8)'),
    (['--config.weight_decay=-0.1'], 'weight_decay must be >= 0'),
    (['--config.accum_steps=3'], 'accum_steps (3) must divide batch_size (64)'),
    (['--config.lr=-1'], 'lr must be > 0'),
    (['--config.decay=step'], "decay must be one of 'cosine', 'linear', 'constant'"),
])
def test_bad_config_rejected_before_compiling(tmp_path, data_dir, args, message):
    proc = run_train(tmp_path / 'bad', *QUICK, *args, data_dir=data_dir)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / 'bad').exists()  # nothing written


def test_image_size_overrides_the_presets_model_size(tmp_path, data_dir):
    """The digits preset sets model_overrides.img_size=16; --config.image_size is the run's size above it."""
    proc = run_train(tmp_path / 'r', *QUICK, '--config.image_size=24', '--config.total_steps=4',
                     '--config.warmup_steps=1', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model, _ = vitjax.load(tmp_path / 'r' / 'model')
    assert model.img_size == 24
    typo = run_train(tmp_path / 'b', *QUICK, '--config.lrr=1', data_dir=data_dir)
    assert typo.returncode == 2 and "no field 'lrr'; Did you mean lr" in typo.stderr and 'Traceback' not in typo.stderr
    preset = tmp_path / 'preset.py'
    preset.write_text('from vitjax.train.configs.default import get_config as base\n\n'
                      'def get_config():\n    c = base()\n'
                      "    c.model_overrides.dtype = 'bfloat16'\n    return c\n")
    both = run_train(tmp_path / 'b', '--config', str(preset), *QUICK, data_dir=data_dir)
    assert both.returncode == 1 and 'dtype (--config.dtype)' in both.stderr and not (tmp_path / 'b' / 'model').exists()


@pytest.mark.parametrize('split', ['test[:0]', 'bogus'])
def test_bad_eval_split_found_before_step_1(tmp_path, data_dir, split):
    proc = run_train(tmp_path / 'r', *QUICK, f'--config.eval_split={split}', data_dir=data_dir)
    assert proc.returncode == 1 and split in proc.stderr and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / 'r' / 'checkpoints').exists() and not (tmp_path / 'r' / 'metrics.jsonl').exists()


@pytest.mark.parametrize('args, message', [
    (['--config.model=vit_bse_patch16_224'], "unknown model 'vit_bse_patch16_224'"),
    (['--config.dataset=cifar01'], "unknown dataset 'cifar01': not a tfds name nor a folder; did you mean"),
])
def test_unknown_names_suggest_close_matches(tmp_path, data_dir, args, message):
    proc = run_train(tmp_path / 'bad', *QUICK, *args, data_dir=data_dir)
    assert proc.returncode == 1 and message in proc.stderr
    if 'model' in args[0]:
        assert 'did you mean vit_base_patch16_224' in proc.stderr


def test_unknown_url_workdir_refused_not_made_locally(tmp_path, data_dir):
    # gs:// goes through epath (tests/test_storage.py); anything else is not a place to write a run
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'train.py'), '--workdir=http://host/run', *QUICK],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 2 and 'a URL workdir must be one of gs://' in proc.stderr
    assert os.listdir(tmp_path) == []  # no local 'http:' directory


def test_batch_not_divisible_by_devices(tmp_path, data_dir):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4')
    proc = subprocess.run([sys.executable, 'train.py', f'--workdir={tmp_path / "r"}', *QUICK,
                           '--config.batch_size=6', f'--config.data_dir={data_dir}'], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env=env)
    assert proc.returncode == 1 and 'batch_size 6 does not split into 4 devices' in proc.stderr


def test_memory_checked_before_the_first_step(quick_run, tmp_path, data_dir):
    """Every run prints the compiled step's memory per device; one that does not fit the device (here a
    pretend 1 MiB device) stops before step 1 with advice; --compile_only prepares no data, writes nothing."""
    _, proc = quick_run
    line = next(x for x in proc.stdout.splitlines() if x.startswith('memory: the train step needs'))
    assert float(line.split()[5]) > 0 and 'the device reports no limit' in line
    small = run_train(tmp_path / 'r', *QUICK, '--config.device_memory_gb=0.001', '--compile_only',
                      data_dir=str(tmp_path / 'no-data'))  # the digits not prepared there: not prepared
    assert small.returncode == 1 and 'GiB per device and the device has 0.00 GiB; try --config.accum_steps=2' in \
        small.stderr and 'grad_checkpointing=True' in small.stderr, small.stderr[-2000:]
    assert not (tmp_path / 'r').exists() and not (tmp_path / 'no-data').exists()
    # a headless model (Qwen3's tower, as its hub weights come) with no dataset at hand: sized with a 1000-class head
    headless = run_train(tmp_path / 'h', '--config.model=qwen3_vit_88m', '--config.model_overrides.depth=1',
                         '--config.image_size=32', '--config.device_memory_gb=0.001', '--compile_only',
                         data_dir=str(tmp_path / 'no-data'))
    assert headless.returncode == 1 and 'sized with a 1000-class head' in headless.stdout, headless.stderr[-2000:]
    assert 'GiB per device and the device has 0.00 GiB' in headless.stderr and not (tmp_path / 'h').exists()


def test_existing_run_needs_resume(quick_run, data_dir):
    workdir, _ = quick_run
    proc = run_train(workdir, *QUICK, data_dir=data_dir)
    assert proc.returncode == 2 and 'pass --resume' in proc.stderr


def test_fine_tune_ported_weights_head_only(tmp_path, data_dir):
    """--config.init: a converted DeiT, new 10-way head, position embeddings resampled 14x14 -> 2x2, backbone
    frozen: only the head may change."""
    from porting import convert, random_init
    ckpt = random_init.save(random_init.create('deit_tiny_patch16_224', depth=1), tmp_path / 'deit.safetensors')
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(ckpt), '--model-arg', 'depth=1',
                         '--out', str(tmp_path / 'deit')]) == 0
    proc = run_train(tmp_path / 'ft', '--config.init=' + str(tmp_path / 'deit'), '--config.image_size=32',
                     '--config.trainable=^head', '--config.total_steps=10', '--config.warmup_steps=2',
                     '--config.eval_every=10', '--config.log_every=5', '--config.batch_size=32', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'has a 1000-class head, the dataset has 10 classes: training a new zero-initialised head' in proc.stdout
    src_model, src = vitjax.load(tmp_path / 'deit')
    model, out = vitjax.load(tmp_path / 'ft' / 'model')
    assert (model.num_classes, model.img_size, src_model.num_classes) == (10, 32, 1000)
    from vitjax.io import flatten
    from vitjax.models.layers import resample_abs_pos_embed
    a, b = flatten(src['params']), flatten(out['params'])
    assert b['pos_embed'].shape == (1, 1 + 2 * 2, 192)
    np.testing.assert_allclose(b['pos_embed'], resample_abs_pos_embed(a['pos_embed'], (2, 2), (14, 14)), atol=1e-6)
    for k in a:
        if not k.startswith(('head', 'pos_embed')):
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert b['head/kernel'].shape == (192, 10) and np.abs(b['head/kernel']).max() > 0  # zero-init, then trained
    assert json.loads((tmp_path / 'ft' / 'model' / 'config.json').read_text())['model_name'] == 'deit_tiny_patch16_224'


def test_swin_preset_learns(tmp_path, data_dir):
    """configs/digits_swin.py: the same job with a SwinTransformer (shifted windows, patch merging)."""
    proc = run_train(tmp_path / 'swin', '--config', 'configs/digits_swin.py', '--config.total_steps=60',
                     '--config.warmup_steps=10', '--config.log_every=10', '--config.eval_every=30',
                     '--config.checkpoint_every=30', '--config.batch_size=64', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train, evals = records(tmp_path / 'swin', 'train'), records(tmp_path / 'swin', 'eval')
    assert train[-1]['loss'] < 0.75 * train[0]['loss'] and evals[-1]['accuracy'] > 0.5  # chance is 0.1
    model, _ = vitjax.load(tmp_path / 'swin' / 'model')
    assert type(model).__name__ == 'SwinTransformer' and model.depths == (2, 2)


def test_scan_blocks_learns_and_saves_per_block(tmp_path, data_dir):
    """--config.scan_blocks: one compiled block scanned over depth (with stochastic depth rates as data); the
    saved model is in the per-block layout every other tool reads."""
    proc = run_train(tmp_path / 'scan', *QUICK, '--config.model_overrides.depth=2', '--config.scan_blocks=True',
                     '--config.drop_path_rate=0.1', data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    train, evals = records(tmp_path / 'scan', 'train'), records(tmp_path / 'scan', 'eval')
    assert train[-1]['loss'] < 0.75 * train[0]['loss'] and evals[-1]['accuracy'] > 0.5  # chance is 0.1
    assert json.loads((tmp_path / 'scan' / 'summary.json').read_text())['compilations'] == {'train': 1, 'eval': 1}
    model, variables = vitjax.load(tmp_path / 'scan' / 'model')
    assert not model.scan_blocks and model.depth == 2 and {'blocks_0', 'blocks_1'} <= set(variables['params'])
