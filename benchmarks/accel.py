"""The accelerator rows of `make bench`: ViT-B/16 training step in bf16, vitjax against timm + torch.compile + AMP.

    python -m benchmarks.bench --sections accel       # on a GPU host; part of the default sections there

vitjax runs train.py's own step (pmap over the host's devices, donated, `dtype=bfloat16`: bf16 matmul inputs,
f32 params / residual stream / softmax / head, cuDNN attention where `layers.attention_implementation` picks it,
uint8 batches normalised on the device) at JAX's default matmul precision. timm runs the way `timm/train.py
--amp --amp-dtype bfloat16 --torchcompile` does: the model compiled, the forward under
`torch.autocast(bfloat16)`, torch.optim.AdamW (β 0.9/0.999, weight decay 0.1) and clip_grad_norm_, the batch
already on the device as float32. Both sides take one device each, in their own process.

MFU = XLA's FLOP count of the step / step time / the device's dense bf16 peak from its spec sheet (PEAK_BF16).
On a CPU the same code runs (the test runs it with ViT-Ti), with no MFU: a CPU has no bf16 spec peak.
"""
from __future__ import annotations

import os
import time
from typing import Optional

from benchmarks.harness import Contender, device_name, flops_of, interleaved, model_label, record

# Dense (not 2:4 sparse) bf16 TFLOP/s per device, vendor spec sheets; matched against jax's device_kind.
PEAK_BF16 = (('H200', 989.0), ('H100', 989.0), ('A100', 312.0), ('L40S', 362.0), ('L4', 121.0), ('A10', 125.0),
             ('TPU v6', 918.0), ('TPU v5p', 459.0), ('TPU v5', 197.0), ('TPU v4', 275.0))


def peak_bf16_tflops(device_kind: str) -> Optional[float]:
    return next((p for k, p in PEAK_BF16 if k.lower() in device_kind.lower()), None)


def _vitjax_side(name: str, batch: int, model_kwargs: Optional[dict] = None) -> tuple[dict, dict]:
    import jax
    import numpy as np

    import vitjax
    from vitjax.train import optim, parallel, train_step
    from vitjax.train.config import default_config
    from vitjax.models.layers import attention_implementation, backend_info
    model, variables = vitjax.create_model(name, num_classes=1000, dtype=jax.numpy.bfloat16, **(model_kwargs or {}))
    c = default_config()
    c.warmup_steps, c.lr, c.dtype = 1, 1e-4, 'bfloat16'
    tx = optim.create_optimizer(c, variables['params'], 10 ** 6)
    par = parallel.create('pmap')
    holder = {'state': par.create_state(
        lambda p: train_step.create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(1)),
        variables['params'])}
    cfg = model.pretrained_cfg
    train_fn, eval_fn = train_step.step_functions(model, tx, optim.create_schedule(c, 10 ** 6), 1000,
                                                  mean=cfg.mean, std=cfg.std)
    p_train, _ = par.compile(train_fn, eval_fn, holder['state'])
    size = model.img_size if isinstance(model.img_size, int) else model.img_size[0]
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    labels = rng.integers(0, 1000, batch).astype(np.int32)
    device_batch = par.put_batch({'image': images, 'label': labels})

    def train():
        holder['state'], m = p_train(holder['state'], device_batch)
        jax.block_until_ready(m['loss'])
    t0 = time.perf_counter()
    train()
    info = {'compile_s': round(time.perf_counter() - t0, 1), 'device': device_name(),
            'device_kind': jax.devices()[0].device_kind, 'devices': jax.local_device_count()}
    info['attention'] = attention_implementation(*backend_info()[:1], 'bfloat16', model.embed_dim // model.num_heads,
                                                 backend_info()[1])

    def step_fn(p, x, y):  # one device's share of the step, for XLA's FLOP count
        def loss(p):
            return optim.cross_entropy(model.apply({'params': p}, x, train=True), y, 1000).mean()
        return tx.update(jax.grad(loss)(p), tx.init(p), p)
    info['flops_per_img'] = flops_of(step_fn, variables['params'], images[:1].astype(np.float32), labels[:1])
    return {'train': train}, info


def _timm_side(name: str, batch: int, compile_torch: bool, model_kwargs: Optional[dict] = None
               ) -> tuple[dict, dict]:
    import numpy as np
    import timm
    import torch
    cuda = torch.cuda.is_available()
    dev = torch.device('cuda' if cuda else 'cpu')
    if cuda:
        torch.backends.cudnn.benchmark = True  # timm/train.py sets it
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    kw = model_kwargs or {}
    model = timm.create_model(name, pretrained=False, num_classes=1000, **kw).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
    size = kw.get('img_size') or model.pretrained_cfg['input_size'][-1]  # timm's cfg keeps the default size
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size)).astype(np.float32)).to(dev)
    y = torch.from_numpy(rng.integers(0, 1000, batch)).to(dev)
    info = {'compile': compile_torch or 'eager'}
    try:
        fwd = torch.compile(model) if compile_torch else model
    except Exception as e:  # no C++ toolchain / triton: eager, and say so in the row
        fwd, info['compile'] = model, f'eager ({type(e).__name__})'

    def train():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize()
    t0 = time.perf_counter()
    try:
        train()
    except Exception as e:  # torch.compile fails at the first call, not at torch.compile()
        if fwd is model:
            raise
        fwd, info['compile'] = model, f'eager ({type(e).__name__})'
        train()
    info['compile_s'] = round(time.perf_counter() - t0, 1)
    return {'train': train}, info


def bench_accel(name: str = 'vit_base_patch16_224', batch: Optional[int] = None, repeats: int = 3,
                compile_torch: bool = True, model_kwargs: Optional[dict] = None) -> list[dict]:
    """One row: the bf16 train step's img/s per device, vitjax vs timm + torch.compile + AMP, with MFU."""
    import jax
    platform = jax.devices()[0].platform
    batch = batch or (8 if platform == 'cpu' else 256)
    # One device a side (timm's step is single-device), sharing it: JAX must not take 75% of its memory up front.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    if platform == 'gpu':
        os.environ.setdefault('CUDA_VISIBLE_DEVICES', '0')
    jx = Contender(_vitjax_side, name, batch, model_kwargs)
    # torch has no TPU here: a TPU row is vitjax's alone, with its MFU.
    tm = Contender(_timm_side, name, batch, compile_torch, model_kwargs) if platform in ('gpu', 'cpu') else None
    try:
        t = interleaved({'vitjax': lambda: jx('train'), **({'timm': lambda: tm('train')} if tm else {})}, repeats)
    finally:
        for side in (jx, tm):
            side and side.close()
    info = jx.info
    peak = None if platform == 'cpu' else peak_bf16_tflops(info['device_kind'])
    baseline = tm and ('timm_compile_amp' if tm.info['compile'] is True else f"timm_{tm.info['compile']}_amp")
    return [record(name='train_step_bf16', model=model_label(name, model_kwargs), batch=batch, dtype='bfloat16',
                   device=info['device'],
                   vitjax_img_s=round(batch / t['vitjax'], 2), baseline=baseline,
                   baseline_img_s=tm and round(batch / t['timm'], 2), flops_per_img=info['flops_per_img'],
                   peak_gflops=peak and peak * 1e3 * info['devices'], compile_s=info['compile_s'],
                   baseline_compile_s=tm and tm.info['compile_s'], attention=info['attention'],
                   devices=info['devices'],
                   path="train.py's pmap step at default matmul precision vs timm --amp bf16 --torchcompile, "
                        'each in its own process on the same device; MFU against the dense bf16 spec peak',
                   **({'model_kwargs': model_kwargs} if model_kwargs else {}))]
