"""Run by tests/test_parallel.py in a fresh process with 4 simulated CPU devices (XLA_FLAGS is read at start):

    python tests/parallel_worker.py steps OUT.json
        5 AdamW steps of one model under pmap and under fsdp from the same init and batches
    python tests/parallel_worker.py train OUT.json RUNS_JSON
        train.py in this process (tests/trainrun.py) for each [workdir, arg, ...] of RUNS_JSON, in order

and writes what it found to OUT.json."""
import json
import sys

import jax
import numpy as np

assert jax.device_count() == 4, jax.devices()


def steps():
    from vitjax.train import parallel, train_step
    from vitjax.train.config import default_config
    from vitjax.models import VisionTransformer
    from vitjax.train.optim import create_optimizer, create_schedule
    # 4 divides every dimension but the scalars' and the rng key's: fsdp shards all the rest
    model = VisionTransformer(img_size=16, patch_size=4, embed_dim=64, depth=1, num_heads=4, num_classes=12)
    x = np.random.default_rng(0).standard_normal((5, 16, 16, 16, 3)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 12, (5, 16)).astype(np.int32)
    params = jax.device_get(model.init(jax.random.PRNGKey(0), x[0, :1])['params'])
    c = default_config()
    tx = create_optimizer(c, params, 100)
    out = {}
    for mode in ('pmap', 'fsdp'):
        par = parallel.create(mode, fsdp_min_bytes=0)
        state = par.create_state(
            lambda p: train_step.create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(1)), params)
        out[f'{mode}_bytes'] = par.state_bytes_per_device(state)
        out[f'{mode}_sharded_leaves'] = sum(any(s is not None for s in getattr(l.sharding, 'spec', ()))
                                            for l in jax.tree.leaves(state)) if mode == 'fsdp' else 0
        if mode == 'fsdp':  # what stays whole on every device: arrays no dimension of which 4 divides
            out['replicated_bytes'] = sum(l.size * l.dtype.itemsize for l in jax.tree.leaves(state)
                                          if all(s is None for s in l.sharding.spec))
        train_fn, eval_fn = train_step.step_functions(model, tx, create_schedule(c, 100), 12)
        step, _ = par.compile(train_fn, eval_fn, state)
        for i in range(5):
            state, m = step(state, par.put_batch({'image': x[i], 'label': y[i]}))
        out[f'{mode}_loss'] = float(par.get(m)['loss'])
        out[f'{mode}_params'] = {k: np.asarray(v).tolist() for k, v in
                                 zip(range(10**6), jax.tree.leaves(par.host_state(state.params)))}
    return out


def train(runs):
    """Several runs in one process: train.py's start-up (the interpreter, jax, TensorFlow) is paid once."""
    import trainrun
    return [dict(zip(('rc', 'stdout', 'stderr'), (p.returncode, p.stdout, p.stderr)))
            for p in (trainrun.train(f'--workdir={workdir}', *args) for workdir, *args in runs)]


if __name__ == '__main__':
    result = steps() if sys.argv[1] == 'steps' else train(json.loads(sys.argv[3]))
    with open(sys.argv[2], 'w') as f:
        json.dump(result, f)
