"""Untrusted checkpoints: pickled code is refused without running, broken files and foreign state dicts are
named with their keys, and a failed conversion leaves no output directory."""
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from porting import convert, random_init, sources


class _Payload:
    """Unpickling this creates a file: proof that code in a checkpoint would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def _malicious(path: Path, marker: Path) -> Path:
    state = {'cls_token': torch.zeros(1, 1, 192), 'payload': _Payload(marker)}
    path.write_bytes(pickle.dumps(state))
    return path


def test_the_malicious_pickle_is_real(tmp_path):
    marker = tmp_path / 'pwned'
    f = _malicious(tmp_path / 'evil.pth', marker)
    # A plain unpickler in another process runs the payload: the file appears.
    subprocess.run([sys.executable, '-c', f'import pickle; pickle.loads(open({str(f)!r}, "rb").read())'],
                   check=True, cwd=Path(__file__).parent)
    assert marker.exists()


@pytest.mark.parametrize('suffix', ['.pth', '.bin', '.pt'])
def test_pickled_code_is_refused_without_running(tmp_path, capsys, suffix):
    marker = tmp_path / 'pwned'
    f = _malicious(tmp_path / f'evil{suffix}', marker)
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(f), '--out',
                         str(tmp_path / 'out')]) == 1
    err = capsys.readouterr().err
    assert f'{f} could not be loaded safely (weights_only=True)' in err
    assert not marker.exists() and not (tmp_path / 'out').exists()


@pytest.fixture(scope='module')
def good(tmp_path_factory):
    d = tmp_path_factory.mktemp('ck')
    tm = random_init.create('deit_tiny_patch16_224', depth=1)
    return random_init.save(tm, d / 'deit.safetensors'), tm


def _convert(ckpt, out):
    return convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(ckpt), '--model-arg', 'depth=1',
                         '--out', str(out)])


def test_truncated_and_flipped_header(tmp_path, capsys, good):
    ckpt, _ = good
    data = ckpt.read_bytes()
    (tmp_path / 'trunc.safetensors').write_bytes(data[: len(data) // 3])
    header = bytearray(data)
    header[12] ^= 0xFF  # inside the JSON header
    (tmp_path / 'flip.safetensors').write_bytes(bytes(header))
    for name in ('trunc', 'flip'):
        assert _convert(tmp_path / f'{name}.safetensors', tmp_path / 'out') == 1
        assert f'{name}.safetensors is not a readable safetensors file' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()


def _edited(tmp_path, good, edit):
    state = {k: v.clone() for k, v in sources.read_state_dict(good[0]).items()}
    edit(state)
    f = tmp_path / 'edited.safetensors'
    save_file(state, str(f))
    return f


@pytest.mark.parametrize('edit, expected', [
    (lambda s: s.pop('blocks.0.attn.proj.weight'), 'missing: blocks.0.attn.proj.weight'),
    (lambda s: s.update(extra=torch.zeros(3)), 'unexpected: extra'),
    (lambda s: s.update({'norm.weight': torch.zeros(96)}), 'wrong shape: norm.weight: (96,) != (192,)'),
    (lambda s: s.update({'head.bias': torch.zeros(1000, dtype=torch.int64)}),
     'wrong dtype: head.bias: torch.int64 (expected torch.float32)'),
])
def test_foreign_state_dicts_name_file_and_keys(tmp_path, capsys, good, edit, expected):
    f = _edited(tmp_path, good, edit)
    assert _convert(f, tmp_path / 'out') == 1
    err = capsys.readouterr().err
    assert f'{f} is not a deit_tiny_patch16_224 state dict' in err and expected in err
    assert not (tmp_path / 'out').exists()


def test_half_precision_checkpoints_are_widened(tmp_path, good):
    f = _edited(tmp_path, good, lambda s: s.update({k: v.half() for k, v in s.items()}))
    assert _convert(f, tmp_path / 'out') == 0


def test_the_source_table_routes_checkpoints_and_models(tmp_path):
    """One table serves convert and export: each library's checkpoint is detected by its own row, each built
    model finds its row, and anything else is refused naming the rows we have."""
    import torchvision
    from vitjax.weights.engine import UnsupportedModel
    tv = torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=3)
    timm_vit = random_init.create('vit_tiny_patch16_224', depth=1)
    swin = random_init.create('swin_tiny_patch4_window7_224', depths=(1, 1, 1, 1))
    (tmp_path / 'hf').mkdir()
    (tmp_path / 'hf' / 'config.json').write_text('{}')
    assert sources.detect(None, None) == 'timm'  # hub weights
    assert sources.detect(str(tmp_path / 'x.safetensors'), tv.state_dict()) == 'torchvision'
    assert sources.detect(str(tmp_path / 'x.safetensors'), timm_vit.state_dict()) == 'timm'
    assert sources.detect(str(tmp_path / 'hf'), None) == 'hf'
    assert sources.source_of(tv) is sources.get('torchvision', 'vit')
    assert sources.source_of(timm_vit) is sources.get('timm', 'vit')
    assert sources.source_of(swin) is sources.get('timm', 'swin')
    assert sources.get('timm', 'swin').arch == 'swin'
    with pytest.raises(UnsupportedModel, match=r'torch.nn.modules.linear.Linear .*supported: hf vit; torchvision vit'):
        sources.source_of(torch.nn.Linear(2, 2))
    with pytest.raises(UnsupportedModel, match='supported: timm beit; timm deepseek_vit_enc; timm deepseek_vit; timm eva; timm gemma4_vit_enc; timm gemma4_vit; timm hybrid_vit; timm naflexvit; timm qwen3_vit_enc; timm qwen3_vit; timm relpos_vit; timm sam; timm swin; timm swinv2; timm vit'):
        sources.source_of(tv, 'timm')
    with pytest.raises(ValueError, match="no torchvision source for vitjax architecture 'swin'"):
        sources.get('torchvision', 'swin')
    # Each row's table maps its model both ways, exactly.
    for m in (tv, timm_vit, swin):
        row = sources.source_of(m)
        cfg = row.torch_config(m)
        back = row.to_state(row.from_state(row.state_of(m), cfg), cfg)
        want = {k: v for k, v in m.state_dict().items() if not k.endswith(row.buffers)}
        assert back.keys() == want.keys()
        assert all((back[k] == want[k].numpy()).all() for k in want)
