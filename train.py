"""Train or fine-tune a vitjax model: `python train.py [--config configs/X.py] [--config.field=value ...]`.

The command line is vitjax/main.py and the job vitjax/trainer.py, both installed with the package, so
`vitjax train` runs the same thing.
"""
import sys

from vitjax.hostmem import reexec_with_tuned_malloc

if __name__ == '__main__':
    reexec_with_tuned_malloc()  # first: glibc reads its malloc settings at process start, before jax loads
    from vitjax.main import run
    run(sys.argv)
