"""Data parallel: one pmapped step over 4 (simulated) devices equals one step on the whole batch."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from vitjax.train.config import default_config
from vitjax.models import VisionTransformer
from vitjax.train.train_step import create_train_state, eval_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PMAP_SCRIPT = textwrap.dedent('''
    import jax, numpy as np, optax
    from vitjax.train import parallel
    from vitjax.train.config import default_config
    from vitjax.io import flatten
    from vitjax.models import VisionTransformer
    from vitjax.train.optim import create_optimizer, create_schedule
    from vitjax.train.train_step import create_train_state, step_functions, train_step
    jax.config.update('jax_default_matmul_precision', 'highest')
    assert jax.local_device_count() == 4, jax.devices()
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
    rng = np.random.default_rng(0)
    batch = {'image': rng.standard_normal((16, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 5, 16).astype(np.int32)}
    # Jitted init, numpy noise: the eager init and jax.random perturbation compiled every op and every shape's
    # normal() on its own (a third of the run; ~3 s even jitted). The noise only moves the params off init; this
    # seed gives a nonzero accuracy (3/16), so comparing the accuracies checks something.
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch['image'][:1])
    noise = np.random.default_rng(3)
    variables = jax.tree.map(lambda p: p + 0.05 * noise.standard_normal(p.shape).astype(np.float32), variables)
    c = default_config()
    c.warmup_steps = 0
    for name, tx in [('sgd', optax.sgd(0.1)), ('adamw', create_optimizer(c, variables['params'], 10))]:
        state = create_train_state(model, variables, tx, jax.random.PRNGKey(2))
        single, m1 = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=create_schedule(c, 10),
                                                     num_classes=5))(state, batch)
        par = parallel.create('pmap')
        p_train, _ = par.compile(*step_functions(model, tx, create_schedule(c, 10), 5), None)
        multi, m4 = p_train(par.replicate(state), par.put_batch(batch))
        a, b = flatten(single.params), flatten(par.host_state(multi).params)
        print(name, 'max_param_diff', max(float(np.abs(a[k] - b[k]).max()) for k in a))
        m4 = par.get(m4)
        for k in ('loss', 'accuracy', 'grad_norm', 'lr'):
            print(name, k, float(m1[k]), float(m4[k]))
''')


@pytest.mark.slow
def test_pmap_step_equals_single_device_step():
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=4', PYTHONPATH=ROOT,
               JAX_PLATFORMS='cpu')
    proc = subprocess.run([sys.executable, '-c', PMAP_SCRIPT], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [l.split() for l in proc.stdout.splitlines()]
    diffs = {l[0]: float(l[2]) for l in lines if l[1] == 'max_param_diff'}
    # SGD: the update is the gradient, so this is the gradient equality itself.
    assert diffs['sgd'] < 1e-6, diffs
    # AdamW's first step is lr * sign(grad) where |grad| >> eps: equal up to near-zero gradients whose rounding
    # differs, which can move one element by at most 2 * lr.
    assert diffs['adamw'] <= 2 * default_config().lr + 1e-7, diffs
    for name, key, single, multi in (l for l in lines if l[1] != 'max_param_diff'):
        assert float(single) == pytest.approx(float(multi), rel=1e-5, abs=1e-7), (name, key)


@pytest.mark.slow
def test_eval_counts_only_real_examples():
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    x = np.random.default_rng(0).standard_normal((6, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)
    full = eval_step(variables['params'], {'image': x, 'label': labels, 'mask': np.ones(6, np.float32)},
                     model=model, num_classes=3)
    padded = eval_step(variables['params'], {'image': np.concatenate([x[:4], np.zeros_like(x[:2])]),
                                             'label': np.concatenate([labels[:4], [0, 0]]).astype(np.int32),
                                             'mask': np.array([1, 1, 1, 1, 0, 0], np.float32)},
                       model=model, num_classes=3)
    part = eval_step(variables['params'], {'image': x[:4], 'label': labels[:4], 'mask': np.ones(4, np.float32)},
                     model=model, num_classes=3)
    assert float(full['count']) == 6 and float(padded['count']) == 4
    for k in part:
        assert float(padded[k]) == pytest.approx(float(part[k]), rel=1e-6)
    assert float(full['correct_top5']) == 6  # 3 classes: the top 5 hold every label


def test_pmap_batch_layout():
    from vitjax.train import parallel
    par = parallel.create('pmap')
    n = jax.local_device_count()
    out = par.put_batch({'image': np.zeros((4 * n, 8, 8, 3)), 'label': np.zeros(4 * n)})
    assert out['image'].shape == (n, 4, 8, 8, 3) and out['label'].shape == (n, 4)
    if n == 1:
        return
    with pytest.raises(ValueError, match='does not split'):
        par.put_batch({'label': np.zeros(n + 1)})


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_state():
    import jax.numpy as jnp
    from vitjax.train.optim import create_optimizer, create_schedule
    from vitjax.train.train_step import train_step
    c = default_config()
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3,
                              dtype=jnp.bfloat16)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    tx = create_optimizer(c, variables['params'], 10)
    state = create_train_state(model, variables, tx, jax.random.PRNGKey(1))
    state, m = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=create_schedule(c, 10),
                                               num_classes=3))(state, {'image': x, 'label': np.array([0, 1, 2, 0])})
    assert model.apply(variables, x).dtype == jnp.float32  # bf16 matmuls, f32 head (tests/test_precision.py)
    assert {l.dtype for l in jax.tree.leaves((state.params, state.opt_state)) if l.ndim} == {jnp.dtype('float32')}
    assert np.isfinite(float(m['loss']))


@pytest.mark.slow
def test_trace_counter_sees_recompilation():
    from vitjax.train import parallel
    from vitjax.train.optim import create_optimizer, create_schedule
    from vitjax.train.train_step import step_functions
    c = default_config()
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    x = np.zeros((4, 16, 16, 3), np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    tx = create_optimizer(c, variables['params'], 10)
    traces = {}
    for mode in ('pmap', 'fsdp'):
        traces.clear()
        par = parallel.create(mode)
        state = par.create_state(lambda p: create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(1)),
                                 variables['params'])
        p_train, _ = par.compile(*step_functions(model, tx, create_schedule(c, 10), 3, traces=traces), state)
        for _ in range(3):
            state, _ = p_train(state, par.put_batch({'image': x, 'label': np.zeros(4, np.int32)}))
        assert traces == {'train': 1}, mode
        state, _ = p_train(state, par.put_batch({'image': x[:2], 'label': np.zeros(2, np.int32)}))  # new shape
        assert traces == {'train': 2}, mode


@pytest.mark.parametrize('lr', [float('nan'), float('inf')])
def test_nonfinite_update_from_finite_gradients_is_skipped(lr):
    """Finite loss and gradients, but the optimizer turns them into a NaN/Inf update (a NaN or infinite lr
    here; a 0/0 inside Adam in general): the params and moments stay as they were and the step is counted."""
    import optax
    from vitjax.train.train_step import train_step
    model = VisionTransformer(img_size=16, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    x = np.random.default_rng(0).standard_normal((4, 16, 16, 3)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    tx = optax.adamw(lr)
    state = create_train_state(model, variables, tx, jax.random.PRNGKey(1))
    new, m = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=lambda step: lr, num_classes=3))(
        state, {'image': x, 'label': np.array([0, 1, 2, 0])})
    assert np.isfinite(float(m['loss'])) and np.isfinite(float(m['grad_norm'])) and float(m['finite']) == 0
    for a, b in zip(jax.tree.leaves((new.params, new.opt_state)), jax.tree.leaves((state.params, state.opt_state))):
        np.testing.assert_array_equal(a, b)
    assert int(new.nonfinite_steps) == 1 and int(new.first_nonfinite) == 1
