"""Hugging Face ViT checkpoints (hub layout, written by save_pretrained) through the same engine and CLI."""
import json

import pytest
import torch

import vitjax
from conftest import images, max_diff
from porting import convert, random_init

import transformers  # noqa: E402  (a porting extra, installed by `make install`)


def hf_dir(tmp_path, cls, **kw):
    cfg = transformers.ViTConfig(**{**dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=160, image_size=32, patch_size=8, num_labels=5), **kw})
    torch.manual_seed(0)
    m = cls(cfg, add_pooling_layer=False) if cls is transformers.ViTModel else cls(cfg)
    random_init.perturb_(m, 0)
    m.save_pretrained(tmp_path / 'hf')
    return m.eval(), tmp_path / 'hf'


@pytest.mark.parametrize('cls', ['ViTForImageClassification', 'ViTModel'])
def test_hf_converts_with_parity(tmp_path, cls):
    m, path = hf_dir(tmp_path, getattr(transformers, cls))
    assert convert.main(['--model', 'hf-vit', '--checkpoint', str(path), '--out', str(tmp_path / 'out')]) == 0
    report = json.loads((tmp_path / 'out' / 'parity.json').read_text())
    assert report['passed'] and json.loads((tmp_path / 'out' / 'config.json').read_text())['source']['library'] == 'hf'
    model, variables = vitjax.load(tmp_path / 'out')
    x = images(model)
    with torch.no_grad():
        out = m(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    ref = (out.logits if cls == 'ViTForImageClassification' else out.last_hidden_state[:, 0]).numpy()
    assert model.norm_eps == 1e-12 and max_diff(model.apply(variables, x), ref) < 1e-4


@pytest.mark.zoo
@pytest.mark.slow
def test_full_size_google_layout(tmp_path):
    """google/vit-base-patch16-224's architecture at full size (random weights)."""
    m, path = hf_dir(tmp_path, transformers.ViTForImageClassification, hidden_size=768, num_hidden_layers=12,
                     num_attention_heads=12, intermediate_size=3072, image_size=224, patch_size=16, num_labels=1000)
    assert convert.main(['--model', 'google/vit-base-patch16-224', '--checkpoint', str(path),
                         '--out', str(tmp_path / 'out')]) == 0
    assert json.loads((tmp_path / 'out' / 'parity.json').read_text())['max_abs_diff'] < 1e-4


def test_pooler_is_named_as_unsupported(tmp_path, capsys):
    cfg = transformers.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=8)
    transformers.ViTModel(cfg).save_pretrained(tmp_path / 'hf')
    assert convert.main(['--model', 'x', '--checkpoint', str(tmp_path / 'hf'), '--out', str(tmp_path / 'o')]) == 1
    assert 'pooler' in capsys.readouterr().err and not (tmp_path / 'o').exists()
