"""Back to PyTorch: vitjax directory -> timm safetensors that timm loads, bit-exact round trip."""
import jax
import pytest
import timm
import torch
from safetensors.torch import load_file

import vitjax
from conftest import images, max_diff, run_timm
from porting import convert, export, random_init


@pytest.mark.parametrize('name, kwargs', [('deit_tiny_distilled_patch16_224', dict(depth=2)),
                                          ('vit_small_patch16_224', dict(depth=2, global_pool='avg',
                                                                         num_classes=7))])
def test_round_trip_is_bit_exact(tmp_path, name, kwargs):
    src = random_init.save(random_init.create(name, seed=4, **kwargs), tmp_path / 'src.safetensors')
    args = [f'{k}={v}' for k, v in kwargs.items()]
    assert convert.main(['--model', name, '--checkpoint', str(src), '--out', str(tmp_path / 'vj'),
                         *sum([['--model-arg', a] for a in args], [])]) == 0
    assert export.main(['--model', str(tmp_path / 'vj'), '--out', str(tmp_path / 'back.safetensors')]) == 0
    a, b = load_file(str(src)), load_file(str(tmp_path / 'back.safetensors'))
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_fine_tuned_model_goes_back_to_timm(tmp_path):
    name = 'deit_tiny_patch16_224'
    model, variables = vitjax.create_model(name, depth=2, num_classes=4, rng=jax.random.PRNGKey(0))
    # Stand-in for a JAX fine-tune: every parameter moved away from its initialisation.
    variables = jax.tree.map(lambda p: p + 0.03 * jax.random.normal(jax.random.PRNGKey(1), p.shape), variables)
    vitjax.save(tmp_path / 'ft', model, variables, name=name)
    out = tmp_path / 'ft.safetensors'
    assert export.main(['--model', str(tmp_path / 'ft'), '--out', str(out)]) == 0
    # num_classes in the overlay too: otherwise timm treats a 4-way head as one to drop and re-initialise.
    tm = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(out), num_classes=4),
                           depth=2, num_classes=4)
    x = images(model)
    assert max_diff(run_timm(tm, x), model.apply(variables, x)) < 1e-4


def test_export_refuses_a_directory_without_a_name(tmp_path, capsys):
    model, variables = vitjax.create_model('deit_tiny_patch16_224', depth=1)
    vitjax.save(tmp_path / 'anon', model, variables)
    assert export.main(['--model', str(tmp_path / 'anon'), '--out', str(tmp_path / 'x.safetensors')]) == 1
    assert 'records no timm model name' in capsys.readouterr().err
    assert not (tmp_path / 'x.safetensors').exists()


def test_export_never_replaces_a_file_it_did_not_write(tmp_path, capsys):
    import os
    from safetensors.torch import save_file
    model, variables = vitjax.create_model('deit_tiny_patch16_224', depth=1)
    vitjax.save(tmp_path / 'm', model, variables, name='deit_tiny_patch16_224')
    save_file({'w': torch.zeros(2)}, str(tmp_path / 'user.safetensors'))  # someone's own weights
    (tmp_path / 'dir.safetensors').mkdir()
    user, params = (tmp_path / 'user.safetensors').read_bytes(), (tmp_path / 'm' / 'params.safetensors').read_bytes()
    for out, msg in [('user.safetensors', 'user.safetensors is a file vitjax did not write'),
                     ('m/params.safetensors', 'is inside the input'), ('dir.safetensors', 'is a directory'),
                     ('user.safetensors/x.safetensors', 'user.safetensors is not a directory')]:
        assert export.main(['--model', str(tmp_path / 'm'), '--out', str(tmp_path / out)]) == 1
        got = capsys.readouterr()
        assert msg in got.err and 'parity' not in got.out  # refused before the parity run
    assert (tmp_path / 'user.safetensors').read_bytes() == user
    assert (tmp_path / 'm' / 'params.safetensors').read_bytes() == params
    old = os.umask(0o022)
    try:
        for _ in range(2):  # the second run replaces the file the first one wrote
            assert export.main(['--model', str(tmp_path / 'm'), '--out', str(tmp_path / 'back.safetensors')]) == 0
    finally:
        os.umask(old)
    assert os.stat(tmp_path / 'back.safetensors').st_mode & 0o777 == 0o644  # readable like any other file
    assert sorted(os.listdir(tmp_path)) == ['back.safetensors', 'dir.safetensors', 'm', 'user.safetensors']


@pytest.fixture(scope='module')
def deit_dir(tmp_path_factory):
    """A model directory without initialising the model (a compile): its refusals come before any parity run."""
    import numpy as np
    from vitjax.io import param_shapes, unflatten
    from vitjax.registry import build_model
    model = build_model('deit_tiny_patch16_224', depth=1)
    params = unflatten({k: np.zeros(s, np.float32) for k, s in param_shapes(model).items()})
    return vitjax.save(tmp_path_factory.mktemp('deit') / 'm', model, {'params': params}, name='deit_tiny_patch16_224')


@pytest.mark.parametrize('timm_name, builds', [('swin_tiny_patch4_window7_224', 'a SwinTransformer (vitjax swin)'),
                                               ('eva02_tiny_patch14_224', 'an Eva (vitjax eva)'),
                                               ('resnet18', 'a ResNet, which vitjax does not convert')])
def test_export_timm_name_of_another_architecture(deit_dir, tmp_path, capsys, timm_name, builds):
    import os
    assert export.main(['--model', str(deit_dir), '--out', str(tmp_path / 'x.safetensors'),
                        '--timm-name', timm_name]) == 1
    got = capsys.readouterr()
    assert got.err == (f'error: {deit_dir} (deit_tiny_patch16_224) is a vitjax vit model, but timm {timm_name} '
                       f'builds {builds}: pass the --timm-name of a timm vit model\n')
    assert 'parity' not in got.out and os.listdir(tmp_path) == []
