"""The optax chain means what PyTorch means by AdamW + warmup/cosine + clip_grad_norm_: trained side by side."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from conftest import port, timm_model
from porting import timm_vit
from porting import sources
from vitjax.train.config import default_config
from vitjax.io import flatten
from vitjax.train.optim import create_optimizer, create_schedule, path_mask, trainable_mask
from vitjax.train.train_step import create_train_state, train_step

TIMM_VIT = sources.get('timm', 'vit')

SMALL = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=5)
STEPS = 20


def comparable(key):
    """The key bias's true gradient is exactly 0 (softmax ignores a per-query constant), so rounding noise is
    what Adam normalises into a full-size step: its value after training is noise in any framework."""
    return not key.endswith('attn/key/bias')


def config(**kw):
    c = default_config()
    c.update({**dict(lr=3e-3, warmup_steps=5, decay='cosine', end_lr=1e-5, clip_norm=1.0, weight_decay=0.1), **kw})
    return c


def torch_lr_factor(c, total):
    """The schedule written independently, as a PyTorch LambdaLR factor."""
    def f(step):
        if step < c.warmup_steps:
            return step / c.warmup_steps
        t = (step - c.warmup_steps) / (total - c.warmup_steps)
        end = c.end_lr / c.lr
        if c.decay == 'cosine':
            return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
        return end + (1 - end) * (1 - min(t, 1.0))
    return f


def batches(n, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32), rng.integers(0, 5, batch).astype(np.int32))
            for _ in range(n)]


def train_torch(tm, c, data):
    head = lambda n: n.startswith('head')
    trainable = [(n, p) for n, p in tm.named_parameters() if not c.trainable or head(n)]
    for n, p in tm.named_parameters():
        p.requires_grad_(any(n == m for m, _ in trainable))
    # timm's rule: no decay for 1-D params (biases, norm scales, LayerScale) and the position/class tokens.
    no_decay = lambda n, p: p.ndim <= 1 or n in ('pos_embed', 'cls_token', 'dist_token', 'reg_token')
    groups = [{'params': [p for n, p in trainable if not no_decay(n, p)], 'weight_decay': c.weight_decay},
              {'params': [p for n, p in trainable if no_decay(n, p)], 'weight_decay': 0.0}]
    if c.head_lr is not None:
        groups = [dict(g, params=[p for p in g['params'] if not any(p is q for n, q in trainable if head(n))])
                  for g in groups] + [{'params': [p for n, p in trainable if head(n) and p.ndim > 1],
                                       'weight_decay': c.weight_decay, 'lr': c.head_lr},
                                      {'params': [p for n, p in trainable if head(n) and p.ndim <= 1],
                                       'weight_decay': 0.0, 'lr': c.head_lr}]
    opt = torch.optim.AdamW(groups, lr=c.lr, betas=(c.b1, c.b2), eps=c.eps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, torch_lr_factor(c, STEPS))
    losses, norms = [], []
    tm.train()  # all dropout rates are 0: train mode changes nothing but is what a training loop runs
    for x, y in data:
        opt.zero_grad()
        logits = tm(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y).long(),
                                                 label_smoothing=c.label_smoothing)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_([p for _, p in trainable], c.clip_norm)))
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return losses, norms


def train_jax(model, variables, c, data):
    tx = create_optimizer(c, variables['params'], STEPS)
    state = create_train_state(model, variables, tx, jax.random.PRNGKey(0))
    step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=create_schedule(c, STEPS),
                                           num_classes=5, label_smoothing=c.label_smoothing,
                                           trainable=trainable_mask(variables['params'], c)))
    losses, norms = [], []
    for x, y in data:
        state, m = step(state, {'image': x, 'label': y})
        losses.append(float(m['loss']))
        norms.append(float(m['grad_norm']))
    return losses, norms, state.params


@pytest.mark.slow
@pytest.mark.parametrize('kw', [{}, dict(label_smoothing=0.1, decay='linear'), dict(trainable='^head'),
                                dict(head_lr=5e-3)], ids=['adamw', 'smoothing_linear', 'linear_probe', 'head_lr'])
def test_training_parity_with_pytorch(kw):
    c = config(**kw)
    tm = timm_model('vit_tiny_patch16_224', **SMALL)
    model, variables = port(tm)
    start = flatten(variables['params'])
    data = batches(STEPS)
    t_losses, t_norms = train_torch(tm, c, data)
    j_losses, j_norms, params = train_jax(model, variables, c, data)
    rel = np.abs(np.array(j_losses) - t_losses) / np.abs(t_losses)
    assert rel.max() < 1e-4, rel
    # The chain really clipped: some raw gradient norms were above the threshold.
    assert max(t_norms) > c.clip_norm and np.allclose(j_norms, t_norms, rtol=1e-3)
    ours = flatten(params)
    theirs = flatten(TIMM_VIT.from_state(tm.state_dict(), timm_vit.torch_config(tm)))
    for k in filter(comparable, ours):
        np.testing.assert_allclose(ours[k], theirs[k], rtol=1e-4, atol=5e-5, err_msg=k)
    if c.trainable:
        for k in ours:
            if not k.startswith('head'):
                np.testing.assert_array_equal(ours[k], start[k], err_msg=k)
        assert not np.array_equal(ours['head/kernel'], start['head/kernel'])


@pytest.mark.slow
def test_parity_test_detects_wrong_weight_decay():
    """Negative control: the same comparison with weight decay off on the JAX side must fail."""
    c = config()
    tm = timm_model('vit_tiny_patch16_224', **SMALL)
    model, variables = port(tm)
    data = batches(STEPS)
    train_torch(tm, c, data)
    *_, params = train_jax(model, variables, config(weight_decay=0.0), data)
    theirs = flatten(TIMM_VIT.from_state(tm.state_dict(), timm_vit.torch_config(tm)))
    worst = max(float(np.abs(v - theirs[k]).max()) for k, v in flatten(params).items() if comparable(k))
    assert worst > 5e-5 * 3, worst


def test_schedule_matches_formula():
    for decay in ('cosine', 'linear', 'constant'):
        c = config(decay=decay, warmup_steps=10)
        sched = create_schedule(c, 100)
        f = torch_lr_factor(c, 100) if decay != 'constant' else (lambda s: min(s / 10, 1.0))
        for s in (0, 1, 5, 10, 11, 50, 99, 100):
            assert float(sched(s)) == pytest.approx(c.lr * f(s), rel=1e-5, abs=1e-9), (decay, s)


def test_weight_decay_mask():
    tm = timm_model('deit_tiny_distilled_patch16_224', **SMALL)
    _, variables = port(tm)
    no_decay = flatten(path_mask(variables['params'], default_config().no_decay))
    decayed = sorted(k for k, v in no_decay.items() if not v)
    assert all(k.endswith('kernel') for k in decayed)
    assert {'head/kernel', 'patch_embed/proj/kernel', 'blocks_0/attn/query/kernel'} <= set(decayed)
    assert no_decay['pos_embed'] and no_decay['cls_token'] and no_decay['dist_token']
    assert no_decay['blocks_0/norm1/scale'] and no_decay['blocks_0/mlp/fc1/bias']


@pytest.mark.parametrize('name, kept', [
    ('swin_tiny_patch4_window7_224', ['relative_position_bias_table']),
    ('swinv2_tiny_window8_256', ['logit_scale', 'cpb_mlp_0/kernel', 'cpb_mlp_2/kernel', 'q_bias', 'v_bias'])])
def test_weight_decay_mask_swin(name, kept):
    """timm's Swin `no_weight_decay` (V1: the relative-position-bias tables; V2: the CPB MLP and the logit
    scale), besides biases and norms: the same tensors decayed, named by the porting table."""
    from porting.sources import source_of
    tm = timm_model(name, depths=(2, 2, 2, 2))
    _, variables = port(tm)
    no_decay = flatten(path_mask(variables['params'], default_config().no_decay))
    decayed = sorted(k for k, v in no_decay.items() if not v)
    source = source_of(tm, 'timm')
    flat = flatten(variables['params'])
    as_timm = source.to_state({k: flat[k] for k in decayed}, source.torch_config(tm))  # our names -> timm's
    timm_decayed = {n for n, p in tm.named_parameters() if p.ndim > 1 and n not in tm.no_weight_decay()}
    assert set(as_timm) == timm_decayed and all(k.endswith('kernel') for k in decayed)
    assert all(no_decay[f'layers_1/blocks_1/attn/{k}'] for k in kept)


@pytest.mark.slow
def test_accumulation_equals_full_batch():
    """k micro-batches average to the full-batch gradient. Plain SGD(lr=1) makes the update the gradient itself
    (Adam would normalise rounding noise in near-zero gradients into lr-sized differences)."""
    import optax
    tm = timm_model('vit_tiny_patch16_224', **SMALL)
    model, variables = port(tm)
    tx = optax.sgd(1.0)
    (x, y), = batches(1, batch=8)
    out = []
    for k in (1, 4):
        state = create_train_state(model, variables, tx, jax.random.PRNGKey(0))
        # Jitted, as train.py runs it: the eager step compiled every op (and the scan body) on its own.
        step = jax.jit(lambda s, b: train_step(s, b, model=model, tx=tx, lr_fn=lambda s: 1.0, num_classes=5,
                                               accum_steps=k))
        state, m = step(state, {'image': x, 'label': y})
        out.append((flatten(state.params), float(m['loss']), float(m['grad_norm'])))
    assert out[0][1] == pytest.approx(out[1][1], rel=1e-6)
    assert out[0][2] == pytest.approx(out[1][2], rel=1e-5) and out[0][2] > 0.1
    for key in out[0][0]:
        np.testing.assert_allclose(out[0][0][key], out[1][0][key], atol=1e-6, err_msg=key)


def test_trainable_matching_nothing_is_an_error():
    c = config(trainable='^nothing')
    with pytest.raises(ValueError, match='matches no parameter'):
        create_optimizer(c, {'head': {'kernel': jnp.zeros((2, 2))}}, 10)
