"""train.py with the faults of VITJAX_FAULT (tests/faults.py) injected: `python tests/faulty_train.py ARGS`."""
import os
import sys

from vitjax.train.hostmem import reexec_with_tuned_malloc

if __name__ == '__main__':
    reexec_with_tuned_malloc()
    from faults import FaultHooks
    from vitjax.train.main import run
    run(sys.argv, hooks=FaultHooks.parse(os.environ.get('VITJAX_FAULT', '')))
