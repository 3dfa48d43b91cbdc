"""`python train.py ARGS` in this process: the same flags, checks and job (vitjax.train.main), without a process's
start-up (interpreter, the imports, TensorFlow's) for every run. What needs a process of its own (a kill, a
signal from outside, simulated devices, the malloc settings) starts train.py or tests/faulty_train.py instead."""
import contextlib
import io
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train(*args, hooks=None, cwd=ROOT) -> subprocess.CompletedProcess:
    """train.py's exit status, stdout and stderr for `args` (strings or paths), as `subprocess.run` reports them."""
    from absl import flags

    from vitjax.train import main
    argv = ['train.py', *map(str, args)]
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            os.chdir(cwd)
            fv = flags.FlagValues()  # a fresh set each run: absl's global one keeps the last run's values
            main.define_flags(fv, argv)
            code = main.main(fv(argv), flag_values=fv, hooks=hooks)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except flags.Error as e:  # what absl's app.run prints for a command line it cannot parse
            print(f'FATAL Flags parsing error: {e}', file=sys.stderr)
            code = 1
        finally:
            os.chdir(here)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
