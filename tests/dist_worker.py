"""One process of the multi-process test (tests/test_distributed.py): a few AdamW steps of a tiny ViT on a fixed
global batch under each of MODES (pmap, fsdp: comma-separated), this process feeding only its own rows; writes
the final params of each mode to OUT_PREFIX-MODE.npz.

    python tests/dist_worker.py PROCESS_ID NUM_PROCESSES LOCAL_DEVICES PORT OUT_PREFIX MODES
"""
import os
import sys

pid, nproc, local_devices, port, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
modes = sys.argv[6].split(',')
os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={local_devices}'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

if nproc > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(f'127.0.0.1:{port}', num_processes=nproc, process_id=pid, initialization_timeout=120)
import numpy as np  # noqa: E402

import vitjax  # noqa: E402
from vitjax.train import optim, parallel, train_step  # noqa: E402
from vitjax.train.config import default_config  # noqa: E402
from vitjax.io import flatten  # noqa: E402

GLOBAL_BATCH, STEPS = 16, 4
assert jax.device_count() == 4 and jax.process_count() == nproc
c = default_config()
c.warmup_steps, c.lr = 1, 3e-3
model, variables = vitjax.create_model('vit_tiny_patch16_224', img_size=16, patch_size=4, embed_dim=32, depth=2,
                                       num_heads=2, num_classes=10, rng=jax.random.PRNGKey(0))
tx = optim.create_optimizer(c, variables['params'], STEPS)
rows = slice(pid * GLOBAL_BATCH // nproc, (pid + 1) * GLOBAL_BATCH // nproc)  # this process's shard
for mode in modes:
    par = parallel.create(mode, fsdp_min_bytes=0)
    state = par.create_state(
        lambda p: train_step.create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(1)), variables['params'])
    p_train, _ = par.compile(*train_step.step_functions(model, tx, optim.create_schedule(c, STEPS), 10), state)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(STEPS):
        images = rng.standard_normal((GLOBAL_BATCH, 16, 16, 3)).astype(np.float32)
        labels = rng.integers(0, 10, GLOBAL_BATCH).astype(np.int32)
        state, metrics = p_train(state, par.put_batch({'image': images[rows], 'label': labels[rows]}))
        losses.append(float(par.get(metrics)['loss']))
    params = flatten(par.host_state(state.params))
    np.savez(f'{out}-{mode}.npz', losses=np.asarray(losses), **{k.replace('/', '.'): v for k, v in params.items()})
if nproc > 1:
    jax.distributed.shutdown()
