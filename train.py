"""Train or fine-tune a vitjax model: `python train.py [--config configs/X.py] [--config.field=value ...]`.

The job itself is vitjax/trainer.py (installed with the package, so `vitjax train` runs the same thing).
"""
import sys

from vitjax.trainer import run

if __name__ == '__main__':
    run(sys.argv)
