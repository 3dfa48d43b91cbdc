"""Train or fine-tune a vitjax model: `python train.py [--config configs/X.py] [--config.field=value ...]`.

The command line is vitjax/main.py and the job vitjax/trainer.py, both installed with the package, so
`vitjax train` runs the same thing.
"""
import sys

from vitjax.main import run

if __name__ == '__main__':
    run(sys.argv)
