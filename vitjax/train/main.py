"""`python train.py` / `vitjax train`: the command line of the training job (vitjax/train/trainer.py).

    python train.py                                                   # digits default, offline, minutes on CPU
    python train.py --config configs/cifar10_deit_tiny.py --config.init=out/deit_tiny
    python train.py --config configs/default.py --config.lr=1e-3 --workdir runs/mine
    python train.py --workdir runs/mine --resume                      # continue from the latest checkpoint

Decides what a run may do with its workdir before anything is written (vitjax/train/workdir.py), then trains.
Importing this module defines no flags: `run` defines them.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from typing import Optional

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TensorFlow loads: keep its C++ chatter out
from absl import app, flags, logging

from vitjax.train import trainer
from vitjax.train import workdir as workdirs
from vitjax.train.config import validate
from vitjax.storage import URL_SCHEMES, RunFiles, is_url


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: Optional[list] = None) -> None:
    """The command line's flags on `flag_values`; `argv` (default sys.argv) names the config overrides to define."""
    from ml_collections import config_flags
    fv = flag_values
    flags.DEFINE_string('workdir', '', 'output directory (default: runs/<config.name>-<timestamp>)', flag_values=fv)
    flags.DEFINE_bool('resume', False, 'continue from the latest checkpoint in --workdir (from step 0 if it has none)',
                      flag_values=fv)
    flags.DEFINE_integer('stop_after', 0, 'checkpoint and exit after this many steps of this invocation (for time-'
                         'sliced or preemptible jobs; continue with --resume); 0 runs to the end', flag_values=fv)
    flags.DEFINE_bool('compile_only', False, 'build the model, compile the train step, print its memory per device '
                      '(checked against --config.device_memory_gb or the device) and exit; reads no data, writes '
                      'nothing', flag_values=fv)
    try:  # ml_collections applies the --config.field overrides from sys.argv here, at definition
        config_flags.DEFINE_config_file('config', os.path.join(os.path.dirname(__file__), 'configs', 'default.py'),
                                        'training config file', lock_config=True, flag_values=fv,
                                        sys_argv=argv)
    except (AttributeError, KeyError) as e:  # a field the config does not have: one line, not three tracebacks
        import re
        # ml_collections nests the KeyError's repr, with its close-match hint, in the message
        words = re.findall(r'[\w.]+|\?', str(e).replace('\\n', ' '))
        hint = ' '.join(words[1:]).replace(' ?', '?')
        print(f'error: the config has no field {words[0] if words else e!r}{"; " + hint if hint else ""} (the '
              'command line changes the fields a config has; new model_overrides keys belong in a config file)',
              file=sys.stderr)
        sys.exit(2)


def init_distributed(c) -> None:
    """jax.distributed.initialize, auto-detected (Cloud TPU, SLURM, Open MPI) or from the three config fields."""
    if c.coordinator_address:  # jax's own split of the port fails as an IndexError; port 99999 waited it out
        host, _, port = c.coordinator_address.rpartition(':')
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f'--config.coordinator_address={c.coordinator_address!r} is not HOST:PORT (process '
                             "0's host name or address, and a free port from 1 to 65535)")
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU hosts; GPUs and TPUs bring their own
    named = dict(coordinator_address=c.coordinator_address, num_processes=c.num_processes,
                 process_id=c.process_id) if c.coordinator_address else {}
    if c.process_id == 0:
        hold_coordinator_port(c.coordinator_address)
    if named:
        print(f'jax.distributed: process {c.process_id} of {c.num_processes}, waiting up to '
              f'{c.distributed_timeout} s for all of them at {c.coordinator_address}', flush=True)
    # jax waits for the others in C++ and, when its time is up, aborts the process with a C++ stack trace that
    # no Python code sees: a watchdog of ours ends the wait first, with one line; jax's timeout stays a backstop
    joined = threading.Event()
    threading.Thread(target=_give_up_unless, args=(joined, c), daemon=True, name='vitjax-join').start()
    try:
        # jax takes a C int: a longer wait raised a TypeError
        jax.distributed.initialize(**named, initialization_timeout=min(int(c.distributed_timeout) + 60, 2**31 - 1))
    finally:
        joined.set()


def _give_up_unless(joined: threading.Event, c) -> None:
    if joined.wait(min(c.distributed_timeout, threading.TIMEOUT_MAX)):
        return
    t, n, addr = c.distributed_timeout, c.num_processes, c.coordinator_address
    fix = (f'start every process with the same --config.coordinator_address and its own --config.process_id (0 to '
           f'{n - 1}), or raise --config.distributed_timeout')
    if not addr:  # auto-detected: this process cannot tell which ones are missing
        why, fix = f'not every process of the cluster joined within {t} s', 'check that every process of the job ' \
            'started, or raise --config.distributed_timeout'
    elif c.process_id == 0:
        who = 'process 1' if n == 2 else f'not every one of processes 1 to {n - 1}'
        why = f'{who} never joined the coordinator at {addr} within {t} s'
    else:
        why = f'not all {n} processes met at the coordinator {addr} (process 0 serves it) within {t} s'
    print(f'error: jax.distributed: {why}: {fix}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(1)  # the main thread is inside jax's C++ wait: nothing else can end it without the abort


_COORDINATOR_LOCK = None  # held while this process lives


def hold_coordinator_port(address: str) -> None:
    """Two processes both started as process 0 on one host both serve the coordinator (gRPC binds with
    SO_REUSEPORT), split the others between them, and wait until jax aborts them: a lock per port on this
    host tells the second at once."""
    global _COORDINATOR_LOCK
    import fcntl
    import tempfile
    port = address.rpartition(':')[2]
    path = os.path.join(tempfile.gettempdir(), f'vitjax-coordinator-{port}.lock')
    try:  # O_NOFOLLOW: a link in a shared temporary directory must not make us truncate the file it names
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:  # a link, or another user's file: neither is a lock of ours
        raise ValueError(f'cannot take the lock of coordinator port {port} on this host, {path} ({e.strerror}): '
                         'remove it if it is yours, or use another port') from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors='replace').strip()
        os.close(fd)
        raise ValueError(f'another process on this host ({holder or "pid unknown"}) already runs as process 0 '
                         f'with a coordinator on port {port}: give each process its own --config.process_id '
                         f'(0 to num_processes - 1), or use another port') from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f'pid {os.getpid()}'.encode(), 0)
    _COORDINATOR_LOCK = fd


def check_same_job(c, workdir: str, FLAGS: flags.FlagValues) -> None:
    """Every process must run the same job: a different lr lets replicas drift apart silently, a different step
    count ends in a collective mismatch minutes later. Compared once, before anything is built or written."""
    from vitjax.train.parallel import gather_json
    mine = {'config': dict(json.loads(c.to_json()), process_id=None), 'workdir': workdir,
            'resume': FLAGS.resume, 'stop_after': FLAGS.stop_after, 'compile_only': FLAGS.compile_only}
    everyone = gather_json(mine)
    diff = [f'  --{k}: process 0 has {a!r}, process {i} has {b!r}' for i, other in enumerate(everyone[1:], 1)
            for k, (a, b) in workdirs.config_changes(everyone[0], other).items()]
    if diff:
        raise ValueError('the processes of this run were started with different settings:\n' + '\n'.join(diff) +
                         '\nstart every process with the same command line (only --config.process_id differs)')


def _process_index() -> int:
    import jax
    return jax.process_index()


def main(argv, flag_values: flags.FlagValues = flags.FLAGS, hooks: Optional[trainer.Hooks] = None) -> int:
    """The job of parsed flags (`argv`: what absl left unparsed); `hooks`: the trainer's (tests inject faults)."""
    FLAGS = flag_values
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
    if is_url(workdir) and not workdir.startswith(URL_SCHEMES):
        print(f'error: --workdir {workdir}: a URL workdir must be one of {", ".join(URL_SCHEMES)} (etils.epath\'s '
              'object stores), or pass a local path', file=sys.stderr)
        return 2
    if c.distributed:
        try:
            init_distributed(c)
        except (ValueError, RuntimeError) as e:
            print(f'error: jax.distributed.initialize: {e}', file=sys.stderr)
            return 2
        try:
            check_same_job(c, workdir, FLAGS)
        except ValueError as e:
            print(f'error: {e}', file=sys.stderr)
            return 2
    if FLAGS.compile_only:
        try:
            trainer.compile_only(c)
        except ValueError as e:
            print(f'error: {e}', file=sys.stderr)
            return 1
        return 0
    if FLAGS.stop_after < 0:
        print(f'error: --stop_after must be >= 0 (got {FLAGS.stop_after})', file=sys.stderr)
        return 2
    try:
        workdirs.check_ours(workdir)
        if os.path.isdir(workdir):  # a run file that is a link, a directory or a FIFO: refused before anything is made
            from vitjax.train.metrics import check_outputs
            check_outputs(workdir)
        workdirs.check_init(workdir, c.init)
        if is_url(workdir):  # a local model/ is checked once the workdir exists (its parent must take a probe)
            workdirs.check_model_url(f'{workdir.rstrip("/")}/model')
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except Exception as e:  # an object store's errors (no credentials, no bucket) are not all OSErrors
        print(f'error: cannot read workdir {workdir}: {type(e).__name__}: {e}', file=sys.stderr)
        return 2
    try:
        # one lock per run: on a shared filesystem the other processes of a multi-host run would collide
        if c.distributed and _process_index() != 0:
            lock = workdirs.NoLock()
        elif is_url(workdir):  # object stores have no directories to make and no flock
            lock = workdirs.LeaseLock(workdir)
        else:
            os.makedirs(workdir, exist_ok=True)
            lock = workdirs.Lock(workdir)
    except workdirs.WorkdirInUse as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    except Exception as e:
        hint = f' (does the bucket {workdir.split("/")[2]} exist, and may this host\'s credentials write to it?)' \
            if is_url(workdir) and isinstance(e, (FileNotFoundError, PermissionError)) else ''
        print(f'error: cannot write to workdir {workdir}: {type(e).__name__}: {e}{hint}', file=sys.stderr)
        return 2
    try:
        return _locked_main(c, workdir, FLAGS, hooks)
    finally:
        lock.release()


def _locked_main(c, workdir: str, FLAGS: flags.FlagValues, hooks: Optional[trainer.Hooks]) -> int:
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
    try:  # the final model goes to workdir/model: found unwritable now, not after the training (a URL
        # workdir's lock object was just written there)
        from vitjax.io import check_writable_model_dir
        if not is_url(workdir):
            check_writable_model_dir(os.path.join(workdir, 'model'))
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:  # one copy of each run file: process 0 writes them (the workdir is shared by all processes)
        if _process_index() == 0:
            workdirs.write_config(workdir, config, changes)
    except Exception as e:
        print(f'error: cannot write to workdir {workdir}: {type(e).__name__}: {e}', file=sys.stderr)
        return 2
    try:
        trainer.train(c, workdir, resume, FLAGS.stop_after, hooks, RunFiles(workdir))
    except (ValueError, OSError, FloatingPointError) as e:  # OSError: FileNotFoundError, disk space
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0


def run(argv=None, hooks: Optional[trainer.Hooks] = None) -> None:
    """Entry point with an explicit argument list (`vitjax train ...`); exits with main's status."""
    from vitjax.train.hostmem import reexec_with_tuned_malloc
    reexec_with_tuned_malloc()  # before jax starts: glibc reads its malloc settings at process start
    define_flags(argv=argv)
    app.run(lambda rest: main(rest, hooks=hooks), argv=argv)
