"""Evaluation with the training job's exactly-once eval: padded last batch, masked sums over every device."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import numpy as np


def run_eval(sums_fn: Callable[[dict], dict], dataset: Iterable[dict]) -> dict[str, float]:
    """Loss, top-1, top-5 over every example of `dataset` exactly once; `sums_fn(host_batch)` returns the
    batch's masked sums as numpy (`vitjax.train.parallel` runs the eval step wherever the params live)."""
    totals = None
    for batch in dataset:
        sums = jax.tree.map(lambda x: np.asarray(x, np.float64), sums_fn(batch))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    if totals is None or totals['count'] == 0:
        raise ValueError('the evaluation split is empty')
    n = totals['count']
    return {'loss': totals['loss_sum'] / n, 'accuracy': totals['correct'] / n, 'top5': totals['correct_top5'] / n,
            'count': totals['count']}


def evaluate(model, variables, dataset: str, split: str = 'test', *, batch_size: int = 64,
             data_dir: Optional[str] = None, class_names: Optional[Sequence[str]] = None) -> dict[str, Any]:
    """`vitjax evaluate`: a model on a tfds dataset or an image folder, preprocessed as its config says."""
    from vitjax import inference
    from vitjax.train import data, parallel, train_step
    inference.check_image_logits(model, 'evaluate', lambda x: model.apply(variables, x))
    info = data.get_dataset_info(dataset, split, data_dir)
    if info.num_classes != model.num_classes:
        raise ValueError(f'{dataset} has {info.num_classes} classes, the model {model.num_classes}')
    if class_names and tuple(class_names) != tuple(info.class_names):
        raise ValueError(f'{dataset} classes {list(info.class_names)[:5]}... differ from the ones the model was '
                         f'trained on {list(class_names)[:5]}...')
    cfg = model.pretrained_cfg
    devices = jax.local_device_count() * jax.process_count()
    batch = -(-batch_size // devices) * devices
    ds = data.create_eval_dataset(dataset, split, global_batch_size=batch, image_size=inference.input_size(model),
                                  crop_pct=cfg.crop_pct, crop_mode=cfg.crop_mode, interpolation=cfg.interpolation,
                                  mean=cfg.mean, data_dir=data_dir)
    par = parallel.create('pmap')
    params = par.replicate(variables['params'])
    _, eval_fn = train_step.step_functions(model, None, None, model.num_classes, mean=cfg.mean, std=cfg.std)
    _, p_eval = par.compile(None, eval_fn, None)
    r = run_eval(lambda b: par.get(p_eval(params, par.put_batch(b))), ds)
    return {'dataset': dataset, 'split': split, 'top1': r['accuracy'], 'top5': r['top5'], 'loss': r['loss'],
            'count': int(r['count'])}
