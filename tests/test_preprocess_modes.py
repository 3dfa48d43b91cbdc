"""timm's eval crop modes (center, squash, border) against timm's own transform, on non-square images: every
(crop_mode, interpolation, crop_pct) of the zoo table in `inference.preprocess` (predict, features, attention) and in
the tf.data eval pipeline (`vitjax evaluate`, train.py's eval); and predict / evaluate refusing a head that gives
no per-image logits (global_pool='', num_classes=0)."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import timm.data
from timm.data.transforms_factory import transforms_imagenet_eval
from PIL import Image

import vitjax
import trainrun
from conftest import max_diff
from vitjax import cli, inference
from vitjax.registry import build_model

ROOT = Path(__file__).resolve().parent.parent
SIZES = [(300, 200), (200, 300), (173, 91)]  # (w, h): wide, tall, odd


def _zoo_modes() -> dict:
    """(crop_mode, interpolation, crop_pct) -> the tag with the smallest input of those the zoo table has."""
    tags = json.loads((ROOT / 'vitjax' / 'zoo.json').read_text())['tags']
    modes = {}
    for tag, cfg in sorted(tags.items(), key=lambda kv: (kv[1]['input_size'][1], kv[0])):
        modes.setdefault((cfg['crop_mode'], cfg['interpolation'], cfg['crop_pct']), tag)
    return modes


MODES = _zoo_modes()
TAGS = json.loads((ROOT / 'vitjax' / 'zoo.json').read_text())['tags']


def _photo(w, h, seed=0):
    base = np.random.default_rng(seed).integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR)


def _timm(cfg: dict, **kw):
    return timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=cfg), **kw)


def test_the_zoo_uses_every_mode():
    assert {m for m, _, _ in MODES} == {'center', 'squash', 'border'}  # DeepSeek's six tags: border


@pytest.mark.parametrize('mode', sorted(MODES), ids=lambda m: '-'.join(map(str, m)))
def test_preprocess_equals_timm_for_each_zoo_mode(mode):
    """Measured max |diff| 0 in every mode (the same PIL resize, crop and pad, the same float32 normalisation),
    held to test_inference's 1e-5. Before: border cropped as center, 1.8 on 300x200."""
    tag = MODES[mode]
    model = build_model(tag)
    for w, h in SIZES:
        im = _photo(w, h, seed=w)
        ours = inference.preprocess([im], model)[0]
        ref = _timm(TAGS[tag])(im).numpy().transpose(1, 2, 0)
        assert ours.shape == ref.shape and max_diff(ours, ref) < 1e-5, (tag, (w, h), max_diff(ours, ref))


@pytest.mark.parametrize('crop_mode', ['center', 'squash', 'border'])
@pytest.mark.parametrize('size', [(224, 320), (320, 224), (64, 64)])
def test_eval_image_is_timms_at_any_size_and_crop_pct(crop_mode, size):
    """Pixel for pixel timm's `transforms_imagenet_eval` for non-square targets (center: timm's ResizeKeepRatio,
    not a squash) and crop_pct over 1 (padded: black for center / squash, the mean for border). Before: center
    at (224, 320) squashed, max |diff| 4.0 after normalisation; border cropped, 4.1."""
    mean = (0.5, 0.25, 0.75)
    for crop_pct in (0.9, 1.0, 1.25):
        for interpolation in ('bicubic', 'bilinear'):
            t = transforms_imagenet_eval(img_size=size, crop_pct=crop_pct, crop_mode=crop_mode,
                                         interpolation=interpolation, mean=mean, use_prefetcher=True)
            for w, h in SIZES:
                im = _photo(w, h, seed=h)
                ours = np.asarray(inference.eval_image(im, size, crop_pct, crop_mode, interpolation, mean))
                np.testing.assert_array_equal(ours, np.asarray(t(im)).transpose(1, 2, 0))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
    """One PNG per class (lossless: TensorFlow decodes the pixels PIL does), class i the i-th of SIZES."""
    root = tmp_path_factory.mktemp('modes')
    for i, (w, h) in enumerate(SIZES):
        (root / f'c{i}').mkdir()
        _photo(w, h, seed=i).save(root / f'c{i}' / 'x.png')
    return root


@pytest.mark.parametrize('mode', sorted(MODES), ids=lambda m: '-'.join(map(str, m)))
def test_eval_pipeline_equals_timm_for_each_zoo_mode(folder, mode):
    """The pipeline's uint8 against timm's (before ToTensor). Border, and squash at crop_pct 1 (the whole image
    resized), run timm's PIL ops on the same pixels: equal. A center or squash crop decodes only the window it
    needs and resamples the crop's sub-pixel box in it, which PIL holds in float32: measured max |diff| 2 levels,
    mean <= 0.12 (the crop rounded to whole pixels, as before: 1.6 to 3.3 mean, 21 max). Before, every mode was
    a center crop of a square: border and squash 48 to 52 levels mean."""
    from vitjax.train import data
    tag = MODES[mode]
    cfg = TAGS[tag]
    crop_mode, interpolation, crop_pct = mode
    batch = next(data.create_eval_dataset(str(folder), 'all', global_batch_size=len(SIZES),
                                          image_size=cfg['input_size'][1], crop_pct=crop_pct, crop_mode=crop_mode,
                                          interpolation=interpolation, mean=cfg['mean']))
    exact = crop_mode == 'border' or (crop_mode == 'squash' and crop_pct == 1)
    for label, image in zip(batch['label'], batch['image']):
        with Image.open(folder / f'c{label}' / 'x.png') as im:
            ref = np.asarray(_timm(cfg, use_prefetcher=True)(im.convert('RGB'))).transpose(1, 2, 0).astype(int)
        diff = np.abs(image.astype(int) - ref)
        assert image.shape == ref.shape and diff.max() <= (0 if exact else 2) and diff.mean() < 0.2, \
            (tag, diff.max(), diff.mean())


def _headed(name, seed=0, **kw):
    """A depth-1 model with a random head (vitjax initialises heads to zeros: every image would score alike)."""
    import jax
    model, variables = vitjax.create_model(name, num_classes=3, **kw)
    params = dict(variables['params'])
    head = dict(params['head'])
    head['kernel'] = 0.1 * np.asarray(jax.random.normal(jax.random.PRNGKey(seed), head['kernel'].shape))
    params['head'] = head
    return model, {'params': params}


def _timm_loss(model, variables, files: dict) -> float:
    """The mean cross-entropy of `model` on {file: label}, the images made by timm's own eval transform."""
    import jax
    cfg = dataclasses.asdict(model.pretrained_cfg)
    x = []
    for f in files:
        with Image.open(f) as im:
            x.append(_timm(cfg)(im.convert('RGB')).numpy().transpose(1, 2, 0))
    logp = np.asarray(jax.nn.log_softmax(model.apply(variables, np.stack(x)), axis=-1))
    return float(-np.mean(logp[np.arange(len(files)), list(files.values())]))


@pytest.mark.parametrize('cfg', [dict(TAGS['deepseek_vit_412m.deepseek_v4_flash_vision_exp'], input_size=(3, 224, 224)),
                                 dict(TAGS['vit_base_patch16_lingbot.robbyant'], input_size=(3, 160, 224))],
                         ids=['border', 'squash-non-square'])
@pytest.mark.slow
def test_evaluate_preprocesses_as_timm(folder, cfg):
    """`vitjax evaluate`'s loss is the model's on timm's transform of the same images: the crop mode, the pad
    colour and a non-square input size reach the pipeline (before: a center crop of input_size[1] squared, the
    border loss off by 0.23; the non-square model refused its 160x160 images)."""
    from vitjax.train.evaluate import evaluate
    model, variables = _headed('deit_tiny_patch16_224', depth=1, img_size=tuple(cfg['input_size'][1:]))
    model = model.clone(pretrained_cfg=vitjax.PretrainedCfg.from_dict(cfg))
    ref = _timm_loss(model, variables, {str(folder / f'c{i}' / 'x.png'): i for i in range(len(SIZES))})
    result = evaluate(model, variables, str(folder), 'all', batch_size=4)
    assert result['count'] == 3 and abs(result['loss'] - ref) < 1e-5, (result['loss'], ref)


@pytest.mark.slow
def test_train_py_evaluates_with_the_models_crop_mode(tmp_path):
    """train.py's test loss is its saved model's on timm's transform of the test images: the border mode reaches
    the training job's eval too (before, it center-cropped), and the saved model keeps it."""
    root = tmp_path / 'data'
    files = {}
    for c in range(3):
        (root / f'c{c}').mkdir(parents=True)
        for i, (w, h) in enumerate(SIZES):
            _photo(w, h, seed=10 * c + i).save(root / f'c{c}' / f'{i}.png')
            files[str(root / f'c{c}' / f'{i}.png')] = c
    model, variables = _headed('deit_tiny_patch16_224', depth=1)
    cfg = dict(TAGS['deepseek_vit_412m.deepseek_v4_flash_vision_exp'], input_size=(3, 224, 224))
    vitjax.save(tmp_path / 'init', model.clone(pretrained_cfg=vitjax.PretrainedCfg.from_dict(cfg)), variables,
                name='deit_tiny_patch16_224')
    proc = trainrun.train(f'--workdir={tmp_path / "run"}', f'--config.dataset={root}',
                          f'--config.init={tmp_path / "init"}', '--config.total_steps=2', '--config.warmup_steps=1',
                          '--config.batch_size=3', '--config.log_every=1', '--config.eval_every=2',
                          '--config.train_split=all', '--config.eval_split=all', '--config.test_split=all')
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    saved, saved_vars = vitjax.load(tmp_path / 'run' / 'model')
    assert saved.pretrained_cfg.crop_mode == 'border' and summary['test_examples'] == len(files)
    ref = _timm_loss(saved, saved_vars, files)
    assert abs(summary['test_loss'] - ref) < 1e-5, (summary['test_loss'], ref)


# -- predict / evaluate need one row of logits per image ----------------------------------------------------------
@pytest.fixture(scope='module')
def pooled_nothing(tmp_path_factory):
    """Model directories whose head gives logits per token (timm's global_pool=''), and a headless one."""
    d = tmp_path_factory.mktemp('nopool')
    for name, kw, out in [('deit_tiny_patch16_224', dict(depth=1, global_pool='', num_classes=3), 'vit'),
                          ('swin_tiny_patch4_window7_224', dict(depths=(1, 1, 1, 1), global_pool='', num_classes=3),
                           'swin'),
                          ('deit_tiny_patch16_224', dict(depth=1, num_classes=0), 'headless')]:
        model, variables = vitjax.create_model(name, **kw)
        vitjax.save(d / out, model, variables, name=name)
    return d


@pytest.mark.parametrize('kind', ['vit', 'swin', 'headless'])
@pytest.mark.parametrize('command', ['predict', 'evaluate'])
def test_predict_and_evaluate_refuse_heads_without_per_image_logits(pooled_nothing, folder, kind, command, capsys):
    """One error line naming global_pool (or num_classes), exit 1, nothing on stdout (before: a raw TypeError
    'only 0-dimensional arrays' from predict, a jax broadcast error from evaluate)."""
    model = str(pooled_nothing / kind)
    argv = [command, '--model', model] + ([str(folder / 'c0' / 'x.png')] if command == 'predict' else
                                          ['--dataset', str(folder), '--split', 'all'])
    assert cli.main(argv) == 1
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith('error:')]
    assert not out and len(lines) == 1, err
    if kind == 'headless':
        assert f'{command}: this model has no classifier head (num_classes=0)' in lines[0]
    else:
        per_token = '(197, 3)' if kind == 'vit' else '(7, 7, 3)'
        assert f"{command} needs one row of logits per image" in lines[0] and "global_pool=''" in lines[0] \
            and per_token in lines[0], lines[0]


@pytest.mark.slow
def test_tower_classifier_pooling_nothing_is_refused():
    """The towers' classifier (Qwen3 here) with global_pool='': the same error from the Python API."""
    from vitjax.models import init_variables
    import jax
    model = build_model('qwen3_vit_88m', depth=1, global_pool='', num_classes=3, img_size=64)
    model = model.clone(pretrained_cfg=model.pretrained_cfg.at_size(64))
    variables = init_variables(model, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"predict needs one row of logits per image, but this Qwen3VitClassifier "
                                         r"gives \(16, 3\) per image \(global_pool='' pools nothing"):
        inference.predict(model, variables, [_photo(80, 60)])
