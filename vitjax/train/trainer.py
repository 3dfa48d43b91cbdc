"""The training job: `train(config, workdir)` = set-up -> loop -> finish. AdamW, warmup + decay, clipping,
tfds input, data parallel through `vitjax.train.parallel` (pmap or fsdp). The command line (flags, workdir checks,
fault hooks) is vitjax/train/main.py; `python train.py` and `vitjax train` run it.

Writes into the workdir: metrics.jsonl, tensorboard/, checkpoints/, curves.png, summary.json and model/ (the
final params in the format `vitjax.load` reads); a gs:// workdir through a local staging copy (vitjax/storage.py).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import signal
import sys
import time
from typing import Any, Optional

from vitjax.storage import RunFiles, join

from vitjax.train.config import OWN_FIELD



def initial_model(c, num_classes: int):
    """The model and its initial variables: from `c.init` (a vitjax directory) or fresh from the registry."""
    import jax
    import jax.numpy as jnp
    import vitjax
    from vitjax import loader
    from vitjax.train.config import check_model

    check_model(c)
    regularisation = dict(drop_rate=c.drop_rate, drop_path_rate=c.drop_path_rate,
                          dtype=jnp.bfloat16 if c.dtype == 'bfloat16' else jnp.float32)
    if c.grad_checkpointing:
        regularisation['grad_checkpointing'] = True
    if c.scan_blocks:
        regularisation['scan_blocks'] = True
    rng = jax.random.PRNGKey(c.seed)
    overrides = dict(c.model_overrides)
    owned = {k: OWN_FIELD[k] for k in overrides if k in OWN_FIELD and k != 'img_size'}
    if owned:
        raise ValueError('set these with their own config field, not model_overrides: ' + ', '.join(
            f'{k} (--config.{f})' if f else f'{k} (the dataset decides it)' for k, f in owned.items()))
    if c.init:  # the architecture is the one stored in the directory
        if set(overrides) - {'img_size'}:
            print(f'--config.init: the architecture is the one in {c.init}; model_overrides '
                  f'{sorted(set(overrides) - {"img_size"})} are not used')
        stored = loader.read_config(c.init)['model'].get('num_classes')
        if num_classes is not None and stored != num_classes:
            print(f'--config.init: {c.init} has a {stored}-class head, the dataset has {num_classes} classes: '
                  'training a new zero-initialised head (the backbone is loaded as is)')
        return vitjax.load(c.init, num_classes=num_classes, img_size=c.image_size or None, **regularisation)
    # --config.image_size is the run's input size, above a preset's model_overrides.img_size
    img_size = overrides.pop('img_size', None)
    img_size = c.image_size or img_size
    shown = dict(overrides, **({'img_size': img_size} if img_size else {}))
    overrides.update(regularisation)
    model, variables = vitjax.create_model(c.model, num_classes=num_classes, img_size=img_size, rng=rng, **overrides)
    # a preset's model_overrides stay when --config.model names another model: say what was built
    print(f'model: {c.model}' + (f' with {shown}' if shown else '') +
          f', {sum(x.size for x in jax.tree.leaves(variables)):,} params')
    return model, variables


def check_square(model) -> None:
    """The input pipeline makes square images; a model built for HxW (a dynamic_img_size conversion at
    another aspect) would have its step compiled and memory-checked for HxW, then fed and recompiled at HxH."""
    _, h, w = model.pretrained_cfg.input_size
    if h != w:
        raise ValueError(f'the model\'s input size is {h}x{w} (HxW), and train.py trains and evaluates on square '
                         'images: pass --config.image_size=N to train at NxN (the position embeddings are resampled)')


def evaluate_split(run: 'Run', split: str) -> dict[str, float]:
    from vitjax.train.evaluate import run_eval
    params, par, step = run.state.params, run.par, run.eval_step
    return run_eval(lambda batch: par.get(step(params, par.put_batch(batch))), run.eval_dataset(split))


class Hooks:
    """Called by the loop at fixed points; the reliability tests inject faults through them (tests/faults.py).
    The defaults do nothing."""

    def batch(self, step: int, batch: dict) -> dict:
        return batch

    def after_step(self, step: int) -> None:
        pass

    def after_save(self, step: int) -> None:
        pass


class Interrupt:
    """SIGTERM / SIGINT only set a flag: the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self):
        self.signal = None
        self.agreed = False  # several processes: one of them was signalled, all stop
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def report_devices() -> None:
    """Which devices this run uses, and a warning when jax sees only the CPU on a host with an accelerator
    (a CPU-only jax install on a GPU/TPU machine trains, slowly, without saying so)."""
    import glob
    import shutil

    import jax
    devices = jax.devices()
    print(f'devices: {len(devices)} x {devices[0].device_kind} ({devices[0].platform}), '
          f'{jax.local_device_count()} on process {jax.process_index()} of {jax.process_count()}', flush=True)
    accelerator = shutil.which('nvidia-smi') and glob.glob('/dev/nvidia[0-9]*') or glob.glob('/dev/accel*') \
        or glob.glob('/dev/vfio/[0-9]*')
    if devices[0].platform == 'cpu' and accelerator:
        print(f'warning: jax runs on the CPU, but this host has an accelerator ({accelerator[0]}): install jax '
              'for it (pip install -e ".[cuda]" or ".[tpu]", docs/accelerators.md)', file=sys.stderr)


def check_free_space(directory: str, needed: int) -> None:
    import shutil
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(f'{directory} has {free / 2**20:.0f} MiB free; checkpoints and the final model need about '
                      f'{needed / 2**20:.0f} MiB')


@dataclasses.dataclass
class Run:
    """Everything the loop needs, made once by `setup`."""
    c: Any
    workdir: str
    model: Any
    info: Any
    par: Any
    state: Any
    train_step: Any
    eval_step: Any
    batches: Any
    eval_dataset: Any
    ckpt: Any
    writer: Any
    files: Any
    start: int
    total_steps: int
    traces: dict


def _state_and_steps(c, model, params, num_classes: int, total_steps: int):
    """The train state where it lives and the steps compiled for it, the train step ahead of time so its
    memory per device is known (and checked) before the first batch is read."""
    import jax
    import numpy as np

    from vitjax.train import memory, optim, parallel, train_step

    tx = optim.create_optimizer(c, params, total_steps)
    par = parallel.create(c.parallelism, int(c.fsdp_min_size_mb * 2**20))
    state = par.create_state(lambda p: train_step.create_train_state(model, {'params': p}, tx,
                                                                     jax.random.PRNGKey(c.seed + 1)), params)
    cfg, traces = model.pretrained_cfg, {}
    train_fn, eval_fn = train_step.step_functions(
        model, tx, optim.create_schedule(c, total_steps), num_classes, label_smoothing=c.label_smoothing,
        accum_steps=c.accum_steps, trainable=optim.trainable_mask(par.restore_target(state).params, c),
        mean=cfg.mean, std=cfg.std, traces=traces)
    p_train, p_eval = par.compile(train_fn, eval_fn, state)
    rows = c.batch_size // jax.process_count()
    p_train, stats = par.precompile(p_train, state, {'image': np.zeros((rows, *cfg.input_size[1:], 3), np.uint8),
                                                     'label': np.zeros(rows, np.int32)})
    memory.check(stats, c)
    return par, state, p_train, p_eval, traces


def compile_only(c) -> None:
    """`train.py --compile_only`: the model, its state on the devices and the compiled train step with its
    memory per device; no data read (the classes come from the dataset when it is at hand), nothing written."""
    from vitjax.train import data
    report_devices()
    check_batch_split(c)
    try:
        num_classes = data.get_dataset_info(c.dataset, c.train_split, c.data_dir, prepare=False).num_classes
    except Exception as e:  # not prepared here (e.g. imagenet2012 on a laptop): the model's own head
        print(f'compile_only: {c.dataset} is not at hand ({e}); the model\'s own head is used')
        num_classes = None
    model, variables = initial_model(c, num_classes)
    if model.num_classes == 0:  # headless weights (DINOv2, Qwen3's towers) and no dataset to size a head
        print('compile_only: the model has no head and the dataset is not at hand; sized with a 1000-class head')
        model, variables = initial_model(c, 1000)
    check_square(model)
    _state_and_steps(c, model, variables['params'], model.num_classes, c.total_steps or c.warmup_steps + 1000)


def check_batch_split(c) -> None:
    import jax
    devices = jax.local_device_count()
    if c.batch_size % (devices * jax.process_count() * c.accum_steps):
        raise ValueError(f'batch_size {c.batch_size} does not split into {devices * jax.process_count()} devices '
                         f'x {c.accum_steps} micro-batches')


def setup(c, workdir: str, resume: bool, files) -> Run:
    import jax

    from vitjax.train import data, parallel
    from vitjax.train.checkpoint import Checkpointer
    from vitjax.train.metrics import MetricWriter, NoWriter

    report_devices()
    check_batch_split(c)
    if jax.process_index() == 0:  # a tfds dataset not yet prepared is prepared once, not raced by every host
        data.get_dataset_info(c.dataset, c.train_split, c.data_dir)
    parallel.barrier('vitjax-dataset-prepared')
    info = data.get_dataset_info(c.dataset, c.train_split, c.data_dir)
    for split in {c.eval_split, c.test_split} - {c.train_split}:  # a bad eval split found now, not after training
        if data.get_dataset_info(c.dataset, split, c.data_dir).num_examples == 0:
            raise ValueError(f'{c.dataset} split {split!r} is empty')
    model, variables = initial_model(c, info.num_classes)
    check_square(model)
    cfg = model.pretrained_cfg
    # num_examples counts the whole split (every process's shard); batch_size is global
    total_steps = c.total_steps or math.ceil(c.num_epochs * info.num_examples / c.batch_size)
    if c.warmup_steps >= total_steps:
        raise ValueError(f'warmup_steps ({c.warmup_steps}) must be < total_steps ({total_steps})')

    par, state, p_train, p_eval, traces = _state_and_steps(c, model, variables['params'], info.num_classes,
                                                           total_steps)
    del variables
    # params + two Adam moments per checkpoint kept (plus one being written), and the final model
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(par.restore_target(state)))
    # (a URL workdir's checkpoints go to the object store; only the final model is staged on this disk)
    check_free_space(files.local, state_bytes * (0 if files.remote else c.keep_checkpoints + 1) + state_bytes // 3)
    ckpt = Checkpointer(join(workdir, 'checkpoints'), keep=c.keep_checkpoints)
    start = 0
    if resume:
        restored, meta = ckpt.restore_intact(par.restore_target(state))
        state = par.adopt(restored)
        start = int(meta['step'])
        print(f'resumed from step {start} of {total_steps}')
    main = jax.process_index() == 0  # the one process that writes run files (the workdir is shared)
    if main and resume:
        files.fetch('metrics.jsonl')
    writer = MetricWriter(files.local, resume_step=start if resume else None) if main else NoWriter()

    data_kw = dict(global_batch_size=c.batch_size, image_size=cfg.input_size[1], interpolation=cfg.interpolation,
                   data_dir=c.data_dir)
    train_ds = data.create_train_dataset(c.dataset, c.train_split, seed=c.seed, crop=c.crop, flip=c.flip,
                                         scale=tuple(c.crop_scale), shuffle_buffer=c.shuffle_buffer,
                                         cache_bytes=int(c.cache_bytes), data_shards=c.data_shards,
                                         start_step=start, verbose=main, **data_kw)
    eval_kw = dict(crop_pct=c.eval_crop_pct or cfg.crop_pct, crop_mode=cfg.crop_mode, mean=cfg.mean, **data_kw)
    passes = functools.cache(lambda split: data.eval_passes(c.dataset, split, **eval_kw))  # built once a split
    eval_ds = lambda split: passes(split)()
    return Run(c, workdir, model, info, par, state, p_train, p_eval, par.batches(train_ds), eval_ds, ckpt, writer,
               files, start, total_steps, traces)


def loop(run: Run, stop_after: int, interrupt: Interrupt, hooks: Hooks) -> Optional[int]:
    """Train to the end, or to a stop (signal, --stop_after) after checkpointing: returns the step stopped at."""
    import numpy as np
    from tqdm import tqdm

    import jax

    from vitjax.train.parallel import any_process

    c, par = run.c, run.par
    main = jax.process_index() == 0
    bar = tqdm(total=run.total_steps, initial=run.start, desc='train', unit='step', dynamic_ncols=True,
               disable=not main or not sys.stderr.isatty() and os.environ.get('VITJAX_PROGRESS') != '1')
    say = bar.write if main else (lambda text: None)

    def check_finite():
        """nan_policy='stop': end the run at the first non-finite step, before anything more is written."""
        first = int(par.get(run.state.first_nonfinite))
        if first >= 0 and c.nan_policy == 'stop':
            raise FloatingPointError(
                f'non-finite loss or gradients at step {first}; the update was not applied and training stopped '
                f"(nan_policy='stop'); the last good checkpoint is step {run.ckpt.latest_step()} in "
                f"{run.workdir}/checkpoints. nan_policy='skip' skips such steps instead.")

    def signalled(step):
        """A signal seen by any process stops all of them at the same step: with several processes they agree
        at log and checkpoint steps (a tiny all-gather where the loop syncs with the devices anyway), so every
        host saves the same checkpoint and none waits in a collective for one that left."""
        if jax.process_count() == 1:
            return interrupt.signal is not None
        if step % c.log_every and step % c.checkpoint_every:
            return False
        interrupt.agreed = any_process(interrupt.signal is not None)
        return interrupt.agreed

    window, t_window = [], time.time()
    for step in range(run.start + 1, run.total_steps + 1):
        run.state, metrics = run.train_step(run.state, hooks.batch(step, next(run.batches)))
        hooks.after_step(step)
        window.append(metrics)  # device arrays: no host sync until the log step
        bar.update(1)
        last = step == run.total_steps
        if step % c.log_every == 0 or last:
            check_finite()
            host = [{k: float(v) for k, v in par.get(w).items()} for w in window]
            good = [h for h in host if h['finite']]  # means over the applied steps only (JSON has no NaN)
            m = {k: float(np.mean([h[k] for h in good])) for k in ('loss', 'accuracy', 'grad_norm') if good}
            m.update(lr=host[-1]['lr'], skipped_steps=int(par.get(run.state.nonfinite_steps)))
            if len(good) < len(host):
                say(f'step {step}: {len(host) - len(good)} update(s) skipped in this window for non-finite '
                          f"loss or gradients (nan_policy='skip'); {m['skipped_steps']} so far")
            img_s = len(window) * c.batch_size / (time.time() - t_window)
            run.writer.write(step, 'train', **m, img_per_s=img_s)
            bar.set_postfix(loss=f"{m.get('loss', float('nan')):.4f}", lr=f"{m['lr']:.2e}", img_s=f'{img_s:.0f}')
            window, t_window = [], time.time()
        if step % c.eval_every == 0 or last:
            e = evaluate_split(run, c.eval_split)
            run.writer.write(step, 'eval', **{k: v for k, v in e.items() if k != 'count'})
            say(f"step {step}/{run.total_steps}: eval loss {e['loss']:.4f}  accuracy {e['accuracy']:.4f}  "
                      f"({int(e['count'])} examples)")
        stopping = (stop_after and step - run.start >= stop_after or signalled(step)) and not last
        if step % c.checkpoint_every == 0 or last or stopping:
            check_finite()
            run.ckpt.save(step, par.checkpoint_view(run.state), {'step': step, 'config': c.name})
            if main:  # a URL workdir gets the metrics so far with each checkpoint
                run.writer.flush()
                run.files.sync('metrics.jsonl', 'tensorboard')
            hooks.after_save(step)
        if stopping:
            bar.close()
            return step
    bar.close()
    return None


def finish(run: Run, wall: float) -> dict:
    """The test split, the final model, summary.json and curves.png."""
    import jax
    import jax.numpy as jnp

    import vitjax
    from vitjax import loader
    from vitjax.train.metrics import plot_curves, strict_json

    c, model, steps = run.c, run.model, run.total_steps
    skipped = int(run.par.get(run.state.nonfinite_steps))
    if skipped >= steps:  # nan_policy='skip' and not one update applied: the params are the initial ones
        raise FloatingPointError(f'all {steps} steps were non-finite and skipped: no update was applied, so '
                                 'no model is saved')
    from vitjax.train.checkpoint import state_digest
    from vitjax.train.parallel import same_on_all_processes

    test = evaluate_split(run, c.test_split)
    params = run.par.host_state(run.state.params)
    digest = state_digest(params)
    if not same_on_all_processes(digest):  # replicas that drifted apart: the saved model is process 0's
        print(f'warning: the final params differ between processes (process {jax.process_index()}: sha256 '
              f'{digest[:16]}...); the saved model is process 0\'s', file=sys.stderr)
        digest = None
    if jax.process_index():  # the run files are process 0's to write
        return {}
    # The saved preprocessing is the one this run evaluated with, so `vitjax evaluate` / `predict` agree with it.
    cfg = model.pretrained_cfg
    eval_cfg = dataclasses.replace(cfg, crop_pct=c.eval_crop_pct or cfg.crop_pct)
    files = run.files
    vitjax.save(files.path('model'),
                model.clone(dtype=jnp.float32, drop_rate=0., drop_path_rate=0., pretrained_cfg=eval_cfg),
                {'params': params}, name=loader.read_config(c.init)['model_name'] if c.init else c.model,
                meta={'class_names': list(run.info.class_names)})
    seen = (steps - run.start) * c.batch_size
    summary = {'test_accuracy': test['accuracy'], 'test_loss': test['loss'], 'test_top5': test['top5'],
               'test_examples': int(test['count']), 'steps': steps, 'examples_seen': seen, 'wall_s': round(wall, 2),
               'img_per_s': round(seen / wall, 1), 'devices': jax.device_count(), 'parallelism': c.parallelism,
               'processes': jax.process_count(), 'params_sha256': digest, 'skipped_steps': skipped,
               'compilations': dict(run.traces)}
    if max(run.traces.values()) > 1:  # every batch has the same shapes: a retrace is a bug worth hearing about
        print(f'warning: steps compiled more than once: {run.traces}', file=sys.stderr)
    with open(files.path('summary.json'), 'w') as f:
        f.write(strict_json(summary, indent=2) + '\n')
    plot_curves(files.path('metrics.jsonl'), files.path('curves.png'))
    files.publish_model('model')
    files.sync('metrics.jsonl', 'tensorboard', 'curves.png', 'summary.json')  # summary.json last: the run is done
    print(f"test accuracy {summary['test_accuracy']:.4f}  loss {summary['test_loss']:.4f}  "
          f"({summary['test_examples']} examples, {steps} steps, {summary['wall_s']:.0f} s, "
          f"{summary['img_per_s']:.0f} img/s on {summary['devices']} device(s))")
    print(f"curves: {join(run.workdir, 'curves.png')}\nsummary: {join(run.workdir, 'summary.json')}\n"
          f"model: {join(run.workdir, 'model')}")
    return summary


def train(c, workdir: str, resume: bool = False, stop_after: int = 0, hooks: Optional[Hooks] = None,
          files: Optional[RunFiles] = None) -> dict:
    """The whole job; {} when it stopped early with a checkpoint (continue with resume=True)."""
    import jax
    interrupt = Interrupt()
    files = files or RunFiles(workdir)
    run, stopped = None, None
    try:
        try:
            run = setup(c, workdir, resume, files)
            t0 = time.time()
            stopped = loop(run, stop_after, interrupt, hooks or Hooks())
            wall = time.time() - t0
        finally:
            interrupt.restore()
            if run is not None:  # waits for a checkpoint still being written
                run.ckpt.close()
                run.writer.close()
                if jax.process_index() == 0:
                    files.sync('metrics.jsonl', 'tensorboard')
        if stopped is not None:
            why = f'received {interrupt.signal}' if interrupt.signal else \
                'another process was signalled' if interrupt.agreed else f'--stop_after {stop_after}'
            print(f'{why}: stopped after step {stopped} of {run.total_steps} with a checkpoint; continue with '
                  f'--resume --workdir {workdir}', flush=True)
            return {}
        return finish(run, wall)
    finally:
        files.close()
