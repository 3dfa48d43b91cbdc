"""Model directories: round trip, adaptation, atomic writes, clear errors."""
import json
import os

import jax
import numpy as np
import pytest

import vitjax
from conftest import images, max_diff

NAME = 'deit_tiny_patch16_224'
SMALL = dict(depth=2, img_size=64)


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
    model, variables = vitjax.create_model(NAME, **SMALL, rng=jax.random.PRNGKey(1))
    variables = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(2), p.shape), variables)
    path = tmp_path_factory.mktemp('m') / 'model'
    vitjax.save(path, model, variables, name=NAME)
    return path, model, variables


def test_round_trip(saved):
    path, model, variables = saved
    assert sorted(os.listdir(path)) == ['config.json', 'params.safetensors']
    loaded, lv = vitjax.load(path)
    assert loaded == model
    x = images(model)
    np.testing.assert_array_equal(loaded.apply(lv, x), model.apply(variables, x))


def test_scan_blocks_load_and_save_keep_the_per_block_layout_on_disk(saved, tmp_path):
    path, model, variables = saved
    scan, sv = vitjax.load(path, scan_blocks=True, num_classes=7)  # adapted first, then stacked
    assert scan.scan_blocks and scan.num_classes == 7 and sv['params']['blocks']['mlp']['fc1']['kernel'].shape[0] == 2
    x = images(model)
    plain, pv = vitjax.load(path, num_classes=7)
    np.testing.assert_allclose(scan.apply(sv, x), plain.apply(pv, x), atol=1e-5)
    vitjax.save(tmp_path / 's', scan, sv, name=NAME)
    cfg = json.loads((tmp_path / 's' / 'config.json').read_text())
    assert cfg['model']['scan_blocks'] is False
    back, bv = vitjax.load(tmp_path / 's')
    assert not back.scan_blocks and 'blocks_1' in bv['params']
    np.testing.assert_array_equal(back.apply(bv, x), plain.apply(pv, x))
    with pytest.raises(ValueError, match='SwinTransformer has no option scan_blocks'):
        vitjax.create_model('swin_tiny_patch4_window7_224', scan_blocks=True)


def test_load_with_new_head_and_size(saved):
    path, model, variables = saved
    m2, v2 = vitjax.load(path, num_classes=5, img_size=(48, 80))
    assert m2.num_classes == 5 and m2.pretrained_cfg.input_size == (3, 48, 80)
    assert v2['params']['pos_embed'].shape == (1, 1 + 3 * 5, 192)
    assert m2.apply(v2, images(m2)).shape == (2, 5)
    np.testing.assert_array_equal(v2['params']['blocks_0']['mlp']['fc1']['kernel'],
                                  variables['params']['blocks_0']['mlp']['fc1']['kernel'])


def test_create_model_pretrained_dir(saved):
    path, model, variables = saved
    m, v = vitjax.create_model(NAME, pretrained=str(path), num_classes=3)
    assert m.num_classes == 3 and v['params']['head']['kernel'].shape == (192, 3)
    with pytest.raises(ValueError, match='holds'):
        vitjax.create_model('vit_base_patch16_224', pretrained=str(path))


def test_save_is_atomic_and_replaces(tmp_path, saved):
    _, model, variables = saved
    bad = {'params': {k: v for k, v in variables['params'].items() if k != 'norm'}}
    target = tmp_path / 'out'
    with pytest.raises(ValueError, match='missing: norm/scale'):
        vitjax.save(target, model, bad)
    assert os.listdir(tmp_path) == []  # nothing half-written
    vitjax.save(target, model, variables, extra_json={'note.json': {'a': 1}})
    vitjax.save(target, model, variables)  # replacing an existing directory
    assert sorted(os.listdir(tmp_path)) == ['out']
    assert sorted(os.listdir(target)) == ['config.json', 'params.safetensors']


def test_corrupt_or_missing_files_are_named(tmp_path, saved):
    path, _, _ = saved
    with pytest.raises(FileNotFoundError, match='not a vitjax model directory'):
        vitjax.load(tmp_path)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text((path / 'config.json').read_text())
    data = (path / 'params.safetensors').read_bytes()
    (broken / 'params.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='params.safetensors does not match the checksum'):
        vitjax.load(broken)
    flipped = bytearray(data)
    flipped[-100] ^= 0x01  # one bit of one weight: safetensors itself cannot tell
    (broken / 'params.safetensors').write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match='params.safetensors does not match the checksum'):
        vitjax.load(broken)
    no_sum = {k: v for k, v in json.loads((path / 'config.json').read_text()).items() if k != 'params_sha256'}
    (broken / 'config.json').write_text(json.dumps(no_sum))  # e.g. written by an older version
    (broken / 'params.safetensors').write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match='cannot read .*params.safetensors'):
        vitjax.load(broken)
    cfg = json.loads((path / 'config.json').read_text())
    cfg['model']['embed_dim'] = 96
    cfg['model']['num_heads'] = 3
    (broken / 'config.json').write_text(json.dumps(cfg))
    (broken / 'params.safetensors').write_bytes(data)
    with pytest.raises(ValueError, match='wrong shape'):
        vitjax.load(broken)
