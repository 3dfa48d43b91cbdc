"""Train or fine-tune a vitjax model: `python train.py [--config configs/X.py] [--config.field=value ...]`.

The command line is vitjax/train/main.py and the job vitjax/train/trainer.py, both installed with the package, so
`vitjax train` runs the same thing.
"""
import sys

from vitjax.train.hostmem import reexec_with_tuned_malloc

if __name__ == '__main__':
    reexec_with_tuned_malloc()  # first: glibc reads its malloc settings at process start, before jax loads
    from vitjax.train.main import run
    run(sys.argv)
