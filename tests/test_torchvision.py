"""torchvision ViTs through the same engine (a table of their own) and the same CLI, with parity."""
import json

import pytest
import torch
import torchvision

import vitjax
from conftest import images, max_diff
from porting import convert, random_init, torchvision_vit
from porting import sources

TORCHVISION_VIT = sources.get('torchvision', 'vit')


def tv_model(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    m = torchvision.models.get_model(name, weights=None, **kwargs)
    random_init.perturb_(m, seed)
    return m.eval()


@pytest.mark.slow
@pytest.mark.parametrize('name, fmt', [('vit_b_16', 'pth'),  # torchvision's only conversion in make test
                                       pytest.param('vit_l_16', 'safetensors', marks=pytest.mark.zoo)])
def test_full_size_through_cli(tmp_path, name, fmt):
    m = tv_model(name)
    ckpt = tmp_path / f'{name}.{fmt}'
    if fmt == 'pth':
        torch.save(m.state_dict(), ckpt)
    else:
        random_init.save(m, ckpt)
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), '--out', str(tmp_path / 'out')]) == 0
    report = json.loads((tmp_path / 'out' / 'parity.json').read_text())
    assert report['passed'] and report['pre_logits']['passed']
    model, variables = vitjax.load(tmp_path / 'out')
    x = images(model, batch=1)
    with torch.no_grad():
        ref = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    assert max_diff(model.apply(variables, x), ref) < 1e-4 * max(1, abs(ref).max())
    cfg = json.loads((tmp_path / 'out' / 'config.json').read_text())
    assert cfg['source']['library'] == 'torchvision' and cfg['pretrained_cfg']['interpolation'] == 'bilinear'


def test_table_is_strict_and_names_the_keys(tmp_path):
    m = tv_model('vit_b_16', num_classes=3)
    sd = m.state_dict()
    del sd['encoder.layers.encoder_layer_3.mlp.3.bias']
    from vitjax.weights.engine import ConversionError
    with pytest.raises(ConversionError, match='missing target: blocks_3/mlp/fc2/bias'):
        TORCHVISION_VIT.from_state(sd, torchvision_vit.torch_config(m))


def test_img_size_change_is_refused_for_torchvision(tmp_path, capsys):
    ckpt = tmp_path / 'm.pth'
    torch.save(tv_model('vit_b_16', num_classes=3).state_dict(), ckpt)
    assert convert.main(['--model', 'vit_b_16', '--checkpoint', str(ckpt), '--img-size', '384',
                         '--out', str(tmp_path / 'o')]) == 1
    assert 'apply to timm sources' in capsys.readouterr().err and not (tmp_path / 'o').exists()
