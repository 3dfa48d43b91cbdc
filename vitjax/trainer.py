"""The training job behind `python train.py` and `vitjax train`: AdamW, warmup + decay, clipping, jax.pmap
data parallel, tfds input. Presets live in vitjax/configs/ (the repository's configs/ points there).

    python train.py                                                   # digits default, offline, minutes on CPU
    python train.py --config configs/cifar10_deit_tiny.py --config.init=out/deit_tiny
    python train.py --config configs/default.py --config.lr=1e-3 --workdir runs/mine
    python train.py --workdir runs/mine --resume                      # continue from the latest checkpoint

Writes into --workdir: config.json, metrics.jsonl, tensorboard/, checkpoints/, curves.png, summary.json and
model/ (the final params in the format `vitjax.load` reads).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: keep its C++ chatter out
from absl import app, flags, logging
from ml_collections import config_flags

from vitjax import workdir as workdirs
from vitjax.config import validate

flags.DEFINE_string('workdir', '', 'output directory (default: runs/<config.name>-<timestamp>)')
flags.DEFINE_bool('resume', False, 'continue from the latest checkpoint in --workdir')
flags.DEFINE_integer('stop_after', 0, 'checkpoint and exit after this many steps of this invocation (for time-'
                     'sliced or preemptible jobs; continue with --resume); 0 runs to the end')
try:  # ml_collections applies the --config.field overrides from sys.argv here, at definition
    config_flags.DEFINE_config_file('config', os.path.join(os.path.dirname(__file__), 'configs', 'default.py'),
                                    'training config file', lock_config=True)
except (AttributeError, KeyError) as e:  # a field the config does not have: one line, not three tracebacks
    import re
    # ml_collections nests the KeyError's repr, with its close-match hint, in the message
    words = re.findall(r'[\w.]+|\?', str(e).replace('\\n', ' '))
    hint = ' '.join(words[1:]).replace(' ?', '?')
    print(f'error: the config has no field {words[0] if words else e!r}{"; " + hint if hint else ""} (the command '
          'line changes the fields a config has; new model_overrides keys belong in a config file)', file=sys.stderr)
    sys.exit(2)
FLAGS = flags.FLAGS
# model_overrides keys that have a config field of their own: one setting, one place
OWN_FIELD = {'img_size': 'image_size', 'num_classes': None, 'dtype': 'dtype', 'drop_rate': 'drop_rate',
             'drop_path_rate': 'drop_path_rate', 'grad_checkpointing': 'grad_checkpointing',
             'scan_blocks': 'scan_blocks'}


def build_model(c, num_classes: int):
    """The model and its initial variables: from `c.init` (a vitjax directory) or fresh from the registry."""
    import jax
    import jax.numpy as jnp
    import vitjax

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
        stored = vitjax.io.read_config(c.init)['model'].get('num_classes')
        if stored != num_classes:
            print(f'--config.init: {c.init} has a {stored}-class head, the dataset has {num_classes} classes: '
                  'training a new zero-initialised head (the backbone is loaded as is)')
        return vitjax.load(c.init, num_classes=num_classes, img_size=c.image_size or None, rng=rng,
                           **regularisation)
    # --config.image_size is the run's input size, above a preset's model_overrides.img_size
    img_size = overrides.pop('img_size', None)
    img_size = c.image_size or img_size
    overrides.update(regularisation)
    return vitjax.create_model(c.model, num_classes=num_classes, img_size=img_size, rng=rng, **overrides)


def evaluate(par, p_eval_step, state, dataset) -> dict[str, float]:
    from vitjax.evaluate import run_eval
    return run_eval(lambda batch: par.get(p_eval_step(state.params, par.put_batch(batch))), dataset)


def faults() -> dict[str, set[int]]:
    """Fault injection for the reliability tests: VITJAX_FAULT='nan_at=5,6;kill_in_save=20;sigterm_at=25'
    poisons the batches of steps 5 and 6 with NaN, SIGKILLs the process while the step-20 checkpoint is being
    written, and sends it a SIGTERM during step 25 (at a known step, unlike a signal from outside)."""
    out: dict[str, set[int]] = {'nan_at': set(), 'kill_in_save': set(), 'sigterm_at': set()}
    for item in filter(None, os.environ.get('VITJAX_FAULT', '').split(';')):
        key, _, steps = item.partition('=')
        if key not in out:
            raise ValueError(f'VITJAX_FAULT: unknown fault {key!r} (known: {sorted(out)})')
        out[key] = {int(v) for v in steps.split(',')}
    return out


class Interrupt:
    """SIGTERM / SIGINT only set a flag: the loop finishes its step, checkpoints and exits cleanly."""

    def __init__(self):
        self.signal = None
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def restore(self):
        for s, h in self._old.items():
            signal.signal(s, h)


def check_free_space(directory: str, needed: int) -> None:
    import shutil
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise OSError(f'{directory} has {free / 2**20:.0f} MiB free; checkpoints and the final model need about '
                      f'{needed / 2**20:.0f} MiB')


def train(c, workdir: str, resume: bool, stop_after: int = 0) -> dict:
    interrupt = Interrupt()
    try:
        return _train(c, workdir, resume, stop_after, interrupt)
    finally:
        interrupt.restore()


def _train(c, workdir: str, resume: bool, stop_after: int, interrupt: Interrupt) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm import tqdm

    import vitjax
    from vitjax import data, optim, parallel, train_step
    from vitjax.checkpoint import Checkpointer
    from vitjax.metrics import MetricWriter, plot_curves, strict_json

    devices = jax.local_device_count()
    if c.batch_size % (devices * jax.process_count() * c.accum_steps):
        raise ValueError(f'batch_size {c.batch_size} does not split into {devices * jax.process_count()} devices '
                         f'x {c.accum_steps} micro-batches')
    info = data.get_dataset_info(c.dataset, c.train_split, c.data_dir)
    for split in {c.eval_split, c.test_split} - {c.train_split}:  # a bad eval split found now, not after training
        if data.get_dataset_info(c.dataset, split, c.data_dir).num_examples == 0:
            raise ValueError(f'{c.dataset} split {split!r} is empty')
    model, variables = build_model(c, info.num_classes)
    cfg = model.pretrained_cfg
    image_size = cfg.input_size[1]
    total_steps = c.total_steps or math.ceil(c.num_epochs * info.num_examples * jax.process_count() / c.batch_size)
    if c.warmup_steps >= total_steps:
        raise ValueError(f'warmup_steps ({c.warmup_steps}) must be < total_steps ({total_steps})')

    tx = optim.create_optimizer(c, variables['params'], total_steps)
    par = parallel.create(c.parallelism, int(c.fsdp_min_size_mb * 2**20))
    state = par.create_state(lambda p: train_step.create_train_state(model, {'params': p}, tx,
                                                                     jax.random.PRNGKey(c.seed + 1)),
                             variables['params'])
    del variables
    # params + two Adam moments per checkpoint kept (plus one being written), and the final model
    state_bytes = sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(par.restore_target(state)))
    check_free_space(workdir, state_bytes * (c.keep_checkpoints + 1) + state_bytes // 3)
    fault = faults()
    ckpt = Checkpointer(os.path.join(workdir, 'checkpoints'), keep=c.keep_checkpoints)
    start = 0
    if resume:
        restored, meta = ckpt.restore_intact(par.restore_target(state))
        state = par.adopt(restored)
        start = int(meta['step'])
        print(f'resumed from step {start} of {total_steps}')
    writer = MetricWriter(workdir, resume_step=start if resume else None)

    data_kw = dict(global_batch_size=c.batch_size, image_size=image_size, mean=cfg.mean, std=cfg.std,
                   interpolation=cfg.interpolation, data_dir=c.data_dir)
    train_ds = data.create_train_dataset(c.dataset, c.train_split, seed=c.seed, crop=c.crop, flip=c.flip,
                                         scale=tuple(c.crop_scale), shuffle_buffer=c.shuffle_buffer,
                                         start_step=start, **data_kw)
    eval_ds = lambda split: data.create_eval_dataset(c.dataset, split, crop_pct=c.eval_crop_pct or cfg.crop_pct,
                                                     **data_kw)
    traces: dict[str, int] = {}
    train_fn, eval_fn = train_step.step_functions(
        model, tx, optim.create_schedule(c, total_steps), info.num_classes, label_smoothing=c.label_smoothing,
        accum_steps=c.accum_steps, trainable=optim.trainable_mask(par.restore_target(state).params, c),
        traces=traces)
    p_train_step, p_eval_step = par.compile(train_fn, eval_fn, state)
    batches = par.batches(train_ds)

    t0 = time.time()
    window, seen = [], 0
    bar = tqdm(total=total_steps, initial=start, desc='train', unit='step', dynamic_ncols=True,
               disable=not sys.stderr.isatty() and os.environ.get('VITJAX_PROGRESS') != '1')
    t_window = time.time()
    def check_finite():
        """nan_policy='stop': end the run at the first non-finite step, before anything more is written."""
        first = int(par.get(state.first_nonfinite))
        if first >= 0 and c.nan_policy == 'stop':
            raise FloatingPointError(
                f'non-finite loss or gradients at step {first}; the update was not applied and training stopped '
                f"(nan_policy='stop'); the last good checkpoint is step {ckpt.latest_step()} in {workdir}/"
                "checkpoints. nan_policy='skip' skips such steps instead.")

    for step in range(start + 1, total_steps + 1):
        batch = next(batches)
        if step in fault['nan_at']:
            batch = dict(batch, image=batch['image'] * np.float32('nan'))
        state, metrics = p_train_step(state, batch)
        if step in fault['sigterm_at']:
            os.kill(os.getpid(), signal.SIGTERM)
        window.append(metrics)  # device arrays: no host sync until the log step
        seen += c.batch_size
        bar.update(1)
        if step % c.log_every == 0 or step == total_steps:
            check_finite()
            host = [{k: float(v) for k, v in par.get(w).items()} for w in window]
            good = [h for h in host if h['finite']]  # means over the applied steps only (JSON has no NaN)
            m = {k: float(np.mean([h[k] for h in good])) for k in ('loss', 'accuracy', 'grad_norm') if good}
            m.update(lr=host[-1]['lr'], skipped_steps=int(par.get(state.nonfinite_steps)))
            if len(good) < len(host):
                bar.write(f'step {step}: {len(host) - len(good)} update(s) skipped in this window for non-finite '
                          f"loss or gradients (nan_policy='skip'); {m['skipped_steps']} so far")
            img_s = len(window) * c.batch_size / (time.time() - t_window)
            writer.write(step, 'train', **m, img_per_s=img_s)
            bar.set_postfix(loss=f"{m.get('loss', float('nan')):.4f}", lr=f"{m['lr']:.2e}",
                            img_s=f'{img_s:.0f}')
            window, t_window = [], time.time()
        if step % c.eval_every == 0 or step == total_steps:
            e = evaluate(par, p_eval_step, state, eval_ds(c.eval_split))
            writer.write(step, 'eval', **{k: v for k, v in e.items() if k != 'count'})
            bar.write(f"step {step}/{total_steps}: eval loss {e['loss']:.4f}  accuracy {e['accuracy']:.4f}  "
                      f"({int(e['count'])} examples)")
        stopping = (stop_after and step - start >= stop_after or interrupt.signal) and step < total_steps
        if step % c.checkpoint_every == 0 or step == total_steps or stopping:
            check_finite()
            ckpt.save(step, par.checkpoint_view(state), {'step': step, 'config': c.name})
            if step in fault['kill_in_save']:
                os.kill(os.getpid(), signal.SIGKILL)  # while orbax is still writing in the background
        if stopping:
            bar.close()
            ckpt.close()
            writer.close()
            why = f'received {interrupt.signal}' if interrupt.signal else f'--stop_after {stop_after}'
            print(f'{why}: stopped after step {step} of {total_steps} with a checkpoint; continue with '
                  f'--resume --workdir {workdir}', flush=True)
            return {}
    bar.close()
    wall = time.time() - t0
    skipped = int(par.get(state.nonfinite_steps))
    if skipped >= total_steps:  # nan_policy='skip' and not one update applied: the params are the initial ones
        raise FloatingPointError(f'all {total_steps} steps were non-finite and skipped: no update was applied, so '
                                 'no model is saved')

    test = evaluate(par, p_eval_step, state, eval_ds(c.test_split))
    ckpt.close()
    writer.close()
    params = par.host_state(state.params)
    # The saved preprocessing is the one this run evaluated with, so `vitjax evaluate` / `predict` agree with it.
    eval_cfg = dataclasses.replace(cfg, crop_pct=c.eval_crop_pct or cfg.crop_pct)
    vitjax.save(os.path.join(workdir, 'model'), model.clone(dtype=jnp.float32, drop_rate=0., drop_path_rate=0.,
                                                            pretrained_cfg=eval_cfg),
                {'params': params}, name=vitjax.io.read_config(c.init)['model_name'] if c.init else c.model,
                meta={'class_names': list(info.class_names)})
    summary = {'test_accuracy': test['accuracy'], 'test_loss': test['loss'], 'test_top5': test['top5'],
               'test_examples': int(test['count']), 'steps': total_steps,
               'examples_seen': (total_steps - start) * c.batch_size, 'wall_s': round(wall, 2),
               'img_per_s': round((total_steps - start) * c.batch_size / wall, 1), 'devices': jax.device_count(),
               'skipped_steps': skipped, 'compilations': dict(traces)}
    if max(traces.values()) > 1:  # every batch has the same shapes and dtypes: a retrace is a bug worth hearing about
        print(f'warning: steps compiled more than once: {traces}', file=sys.stderr)
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
        f.write(strict_json(summary, indent=2) + '\n')
    curves = plot_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'curves.png'))
    print(f"test accuracy {summary['test_accuracy']:.4f}  loss {summary['test_loss']:.4f}  "
          f"({summary['test_examples']} examples, {summary['steps']} steps, {summary['wall_s']:.0f} s, "
          f"{summary['img_per_s']:.0f} img/s on {summary['devices']} device(s))")
    print(f'curves: {curves}\nsummary: {workdir}/summary.json\nmodel: {workdir}/model')
    return summary


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    logging.set_verbosity(logging.WARNING)
    c = FLAGS.config
    try:
        validate(c)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    if FLAGS.resume and not FLAGS.workdir:
        print('error: --resume needs --workdir (the run to continue)', file=sys.stderr)
        return 2
    workdir = FLAGS.workdir or os.path.join('runs', f"{c.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if c.distributed:
        import jax
        jax.distributed.initialize()
    if FLAGS.stop_after < 0:
        print(f'error: --stop_after must be >= 0 (got {FLAGS.stop_after})', file=sys.stderr)
        return 2
    try:
        workdirs.check_ours(workdir)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        os.makedirs(workdir, exist_ok=True)
        # one lock per run: on a shared filesystem the other processes of a multi-host run would collide
        lock = workdirs.Lock(workdir) if not c.distributed or jax.process_index() == 0 else workdirs.NoLock()
    except workdirs.WorkdirInUse as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        print(f'error: cannot write to workdir {workdir}: {e}', file=sys.stderr)
        return 2
    try:
        return _locked_main(c, workdir)
    finally:
        lock.release()


def _locked_main(c, workdir: str) -> int:
    """Decide what the run does from what the workdir holds; write nothing until that is settled."""
    config = json.loads(c.to_json())
    steps, resume, changes = workdirs.complete_steps(workdir), FLAGS.resume, None
    if steps and not resume:
        print(f'error: {workdir} already holds checkpoints (steps {", ".join(map(str, steps))}); pass --resume '
              'or another --workdir', file=sys.stderr)
        return 2
    if resume and not steps:  # a preemptible job always passes --resume: its first start begins at step 0
        print(f'--resume: no complete checkpoint in {workdir}/checkpoints; starting from step 0')
        resume = False
    if resume:
        try:
            changes = workdirs.check_resume(workdir, config, c.allow_changes)
        except ValueError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
        if changes:
            print('--resume with changed settings: ' + ', '.join(f'{k}: {a!r} -> {b!r}'
                                                                  for k, (a, b) in changes.items()))
    try:
        workdirs.write_config(workdir, config, changes)
    except OSError as e:
        print(f'error: cannot write to workdir {workdir}: {e}', file=sys.stderr)
        return 2
    try:
        train(c, workdir, resume, FLAGS.stop_after)
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: FileNotFoundError, disk space
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


def run(argv=None) -> None:
    """Entry point with an explicit argument list (`vitjax train ...`); exits with main's status."""
    from vitjax.hostmem import reexec_with_tuned_malloc
    reexec_with_tuned_malloc()  # before jax starts: glibc reads its malloc settings at process start
    app.run(main, argv=argv)


if __name__ == '__main__':
    app.run(main)
