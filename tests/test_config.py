"""The training config's validation: every numeric field finite and in its range, all problems at once."""
import pytest

from vitjax.train.config import default_config, validate


def config(**changes):
    c = default_config()
    for k, v in changes.items():
        setattr(c, k, v)
    return c


def test_default_and_presets_are_valid():
    import importlib
    for name in ('default', 'cifar10_deit_tiny', 'imagenet_vit_b16', 'pets_vit_b16', 'digits_swin'):
        validate(importlib.import_module(f'vitjax.train.configs.{name}').get_config())


@pytest.mark.parametrize('changes, message', [
    (dict(lr=float('nan')), 'lr must be finite (got nan)'),
    (dict(lr=float('inf')), 'lr must be finite (got inf)'),
    (dict(b1=1.0), 'b1 must be in [0, 1) (got 1.0)'),
    (dict(b2=float('nan')), 'b2 must be in [0, 1) (got nan)'),
    (dict(eps=0.0), 'eps must be > 0 (got 0.0)'),
    (dict(weight_decay=float('nan')), 'weight_decay must be finite'),
    (dict(clip_norm=float('inf')), 'clip_norm must be finite'),
    (dict(head_lr=float('nan')), 'head_lr must be finite'),
    (dict(head_lr=0.0), 'head_lr must be > 0'),
    (dict(end_lr=0.01), 'end_lr (0.01) must be <= lr (0.001)'),
    (dict(head_lr=1e-4, end_lr=5e-4), 'end_lr (0.0005) must be <= head_lr (0.0001)'),
    (dict(num_epochs=float('inf')), 'num_epochs must be finite'),
    (dict(label_smoothing=float('nan')), 'label_smoothing must be in [0, 1)'),
    (dict(drop_path_rate=1.0), 'drop_path_rate must be in [0, 1)'),
    (dict(eval_crop_pct=1.5), 'eval_crop_pct must be >= 0 and <= 1'),
    (dict(shuffle_buffer=0), 'shuffle_buffer must be > 0'),
    (dict(image_size=-1), 'image_size must be >= 0'),
    (dict(crop_scale=(0.5, 0.1)), 'crop_scale must be (min, max) with 0 < min <= max <= 1'),
    (dict(crop_scale=(float('nan'), 1.0)), 'crop_scale must be'),
    (dict(trainable='head('), "not a valid regex"),
    (dict(nan_policy='ignore'), "nan_policy must be one of 'stop', 'skip'"),
    (dict(total_steps=0, num_epochs=0.0), 'set total_steps or num_epochs'),
])
def test_bad_values_rejected(changes, message):
    with pytest.raises(ValueError, match='invalid config') as e:
        validate(config(**changes))
    assert message in str(e.value)


def test_all_problems_reported_at_once():
    with pytest.raises(ValueError) as e:
        validate(config(lr=float('nan'), b1=1.0, eps=-1.0))
    assert all(m in str(e.value) for m in ('lr must be finite', 'b1 must be in [0, 1)', 'eps must be > 0'))
