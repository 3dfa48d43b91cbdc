"""train.py's train step timed in a fresh process (the device count is fixed at process start):

    python -m benchmarks.step_timer NAME BATCH REPEATS DEVICES MODE '{"img_size": 64}' FSDP_MIN_BYTES

prints JSON lines: the state bytes per device once the state exists, then compile_s (first call minus a step), step_s (median), state bytes per device, compilations.
"""
import json
import os
import statistics
import sys
import time


def main(name: str, batch: int, repeats: int, devices: int, mode: str, kwargs: dict, fsdp_min_bytes: int = 4 << 20) -> dict:
    os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
    import jax
    import numpy as np
    import vitjax
    from vitjax.train import optim, parallel, train_step
    from vitjax.train.config import default_config
    jax.config.update('jax_default_matmul_precision', 'highest')
    c = default_config()
    c.warmup_steps = 1
    model, v = vitjax.create_model(name, **kwargs)
    tx = optim.create_optimizer(c, v['params'], 1000)
    par = parallel.create(mode, fsdp_min_bytes)
    state = par.create_state(lambda p: train_step.create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(0)),
                             v['params'])
    del v
    traces = {}
    step, _ = par.compile(*train_step.step_functions(model, tx, optim.create_schedule(c, 1000), 1000, traces=traces),
                          state)
    s = model.img_size
    b = par.put_batch({'image': np.zeros((batch, s, s, 3), np.float32), 'label': np.zeros(batch, np.int32)})
    per_device = par.state_bytes_per_device(state)
    # First, so that a parent which stops a step that does not fit in memory still has the state's size.
    print(json.dumps({'state_bytes_per_device': max(per_device.values())}), flush=True)
    t = time.perf_counter()
    state, m = step(state, b)
    jax.block_until_ready(m['loss'])
    first = time.perf_counter() - t
    times = []
    for _ in range(max(repeats, 3)):
        t = time.perf_counter()
        state, m = step(state, b)
        jax.block_until_ready(m['loss'])
        times.append(time.perf_counter() - t)
    return {'compile_s': first - statistics.median(times), 'step_s': statistics.median(times),
            'state_bytes_per_device': max(per_device.values()), 'compilations': traces}


if __name__ == '__main__':
    name, batch, repeats, devices, mode, kwargs, min_bytes = sys.argv[1:8]
    print(json.dumps(main(name, int(batch), int(repeats), int(devices), mode, json.loads(kwargs), int(min_bytes))))
