"""The torch-free hub loader under faults (issue 39): what it deletes, which bytes it trusts, the names it takes.

Repos are laid out as huggingface_hub's cache (tests/hubcache.py, timm's `save_for_hf`, depth 1) and read
through the real `hf_hub_download` with HF_HUB_OFFLINE; most tests load in this process (the cache is pointed
at with huggingface_hub's constants), the CLI and read-only ones in a subprocess."""
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

import hubcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'deit_tiny_patch16_224.fb_in1k'
REPO = 'models--timm--' + NAME


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """One published repo, copied afresh for each test (a test may damage or evict its files)."""
    c = tmp_path_factory.mktemp('hfbase')
    paths = hubcache.add(c, NAME, depth=1)
    return c, paths


@pytest.fixture
def hub(base, tmp_path, monkeypatch):
    """A private cache holding NAME, which `hf_hub_download` in this process reads offline; {file: link}."""
    from huggingface_hub import constants
    c = tmp_path / 'hf'
    shutil.copytree(base[0] / REPO, c / REPO, symlinks=True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(c))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    snap = c / REPO / 'snapshots' / base[1]['commit']
    return c, {f: str(snap / f) for f in ('config.json', 'model.safetensors')}


def _publish(link: str, data: bytes, lfs: bool = True) -> str:
    """`data` as the file of a snapshot link, in a blob named as the hub names it; the blob's path."""
    blobs = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(link))), 'blobs')
    name = hashlib.sha256(data).hexdigest() if lfs else hubcache._git_sha1(data)
    blob = os.path.join(blobs, name)
    with open(blob, 'wb') as f:
        f.write(data)
    os.unlink(link)
    os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    return blob


def _safetensors(tensors: dict) -> bytes:
    from safetensors.numpy import save
    return save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata={'format': 'pt'})


def _flip(blob: str) -> None:
    """One byte of the tensor data changed in place: same size, parses, wrong sha256."""
    with open(blob, 'r+b') as f:
        f.seek(os.path.getsize(blob) - 7)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0xFF]))


def _flat(variables) -> dict:
    from vitjax.io import flatten
    return flatten(variables['params'])


def _one_line(e) -> str:
    msg = str(e.value)
    assert '\n' not in msg, msg
    return msg


# -- item 1 and 13: what the loader deletes ----------------------------------------------------------------------
def test_never_deletes_outside_the_cache_nor_an_intact_file(hub, tmp_path):
    """A snapshot link to the user's own file, and a blob as the hub published it: each holds one int64 tensor
    besides the weights (timm refuses it too), so the load fails, and both files stay."""
    import vitjax
    from safetensors.numpy import load_file
    c, links = hub
    tensors = dict(load_file(links['model.safetensors']), extra=np.arange(4, dtype=np.int64))
    mine = tmp_path / 'mine.safetensors'
    mine.write_bytes(_safetensors(tensors))
    before = mine.read_bytes()
    os.unlink(links['model.safetensors'])
    os.symlink(mine, links['model.safetensors'])
    with pytest.raises(ValueError) as e:
        vitjax.load(NAME)
    assert 'extra is I64' in _one_line(e)
    assert mine.read_bytes() == before and os.path.islink(links['model.safetensors'])

    blob = _publish(links['model.safetensors'], _safetensors(tensors))
    with pytest.raises(ValueError) as e:
        vitjax.create_model(NAME, pretrained=True)
    assert 'extra is I64' in _one_line(e) and 'stays in the cache' in str(e.value)
    assert os.path.isfile(blob) and os.path.exists(links['model.safetensors'])


def _read_only(cache: str, argv: list) -> subprocess.CompletedProcess:
    """`argv` run with `cache` read-only: a read-only bind mount where we are root (chmod does not bind root),
    the write bits removed otherwise."""
    env = hubcache.offline_env(cache)
    if os.geteuid() != 0:
        dirs = [d for d, _, _ in os.walk(cache)]
        for d in dirs:
            os.chmod(d, 0o555)
        try:
            return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        finally:
            for d in dirs:
                os.chmod(d, 0o755)
    if not shutil.which('unshare') or subprocess.run(['unshare', '-m', 'true'], capture_output=True).returncode:
        pytest.skip('root without mount namespaces: no way to make the cache read-only')
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'  # sh's $1: cache
    return subprocess.run(['unshare', '-m', 'sh', '-c', script, 'sh', str(cache), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_damaged_file_in_a_read_only_cache_is_reported_as_damaged(hub):
    c, links = hub
    blob = os.path.realpath(links['model.safetensors'])
    data = open(blob, 'rb').read()
    with open(blob, 'wb') as f:
        f.write(data[:len(data) // 2])
    code = ('import sys, vitjax\ntry:\n    vitjax.load(sys.argv[1])\n'
            'except ValueError as e:\n    sys.exit(f"error: {e}")')
    proc = _read_only(str(c), [sys.executable, '-c', code, NAME])
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and 'is damaged' in errors[0] and 'could not be removed' in errors[0], proc.stderr
    assert os.path.getsize(blob) == len(data) // 2  # left, as it had to be, and said so


# -- item 2: timm's integer buffers ---------------------------------------------------------------------------
@pytest.mark.parametrize('name, model_args', [
    ('swin_tiny_patch4_window7_224.ms_in1k', dict(depths=(1, 1, 2, 1))),
    ('swinv2_tiny_window8_256.ms_in1k', dict(depths=(1, 1, 2, 1))),
    ('beit_base_patch16_224.in22k_ft_in22k_in1k', dict(depth=1)),
    ('vit_relpos_small_patch16_224.sw_in1k', dict(depth=1))])
def test_timms_index_buffers_load_and_stay_in_the_cache(tmp_path, monkeypatch, name, model_args):
    """A file that also holds the int64 `relative_position_index` buffers (and Swin V2's float coordinate
    tables) that older timm versions saved: the params are the convert table's, bit for bit, and timm's own
    loading takes the file too (relpos ViT: timm's filter keeps them; vitjax drops them as the others)."""
    import timm
    from huggingface_hub import constants

    from porting.sources import source_of
    from vitjax import hub as vhub
    paths = hubcache.add(tmp_path, name, **model_args)
    m = paths['model']
    buffers = {k: b.numpy() for k, b in m.named_buffers() if k.endswith(('relative_position_index',
                                                                         'relative_coords_table'))}
    assert any(v.dtype == np.int64 for v in buffers.values())
    state = {k: v.numpy() for k, v in m.state_dict().items()}
    blob = _publish(paths['model.safetensors'], _safetensors({**state, **buffers}))
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    _, flat = vhub.read_params(vhub.read_hub_config(name))
    src = source_of(m, 'timm')
    from vitjax.io import flatten
    ref = flatten(src.from_state(m.state_dict(), json.loads(json.dumps(src.torch_config(m)))))
    assert ref.keys() == flat.keys() and all(np.array_equal(ref[k], flat[k]) for k in ref)
    assert os.path.isfile(blob)
    if 'relpos' not in name:
        os.symlink(blob, tmp_path / 'w.safetensors')  # timm picks its reader by the file's suffix
        timm.create_model(name.split('.')[0], pretrained=True, pretrained_cfg_overlay=dict(
            file=str(tmp_path / 'w.safetensors')), **model_args)


# -- item 3: every new download checked; config and weights from one commit ----------------------------------
def test_a_damaged_new_commit_is_caught_in_the_same_process(hub):
    import vitjax
    c, _ = hub
    vitjax.load(NAME)
    new = hubcache.add(c, NAME, seed=1, depth=1)  # main moves; its transfer has one byte flipped
    blob = os.path.realpath(new['model.safetensors'])
    _flip(blob)
    with pytest.raises(ValueError) as e:
        vitjax.load(NAME)
    assert 'is damaged' in _one_line(e) and 'removed it from the cache' in str(e.value)
    assert not os.path.exists(blob)
    with pytest.raises(ValueError, match='not in the huggingface_hub cache'):  # never used as good later
        vitjax.create_model(NAME, pretrained=True)


def test_config_and_weights_come_from_one_commit(hub):
    """A config read before `main` moved loads the weights of its own commit, and a load after the move sees
    the new commit (a pinned `@rev` still reads the old one)."""
    import vitjax
    from vitjax import hub as vhub
    c, _ = hub
    old = _flat(vitjax.load(NAME)[1])
    cfg = vhub.read_hub_config(NAME)
    new = hubcache.add(c, NAME, seed=1, depth=1)
    _, flat = vhub.read_params(cfg)
    assert all(np.array_equal(old[k], flat[k]) for k in old)
    moved = _flat(vitjax.load(NAME)[1])
    assert vhub.read_hub_config(NAME)['hub']['commit'] == new['commit']
    assert not np.array_equal(moved['blocks_0/mlp/fc1/kernel'], old['blocks_0/mlp/fc1/kernel'])
    pinned = _flat(vitjax.load(f'{NAME}@{cfg["hub"]["commit"]}')[1])
    assert all(np.array_equal(old[k], pinned[k]) for k in old)


def test_the_cli_checks_a_cached_file_no_process_checked(hub, tmp_path):
    """`vitjax predict --model NAME`, a new process, on a cached blob with one byte flipped: exit 1, one line."""
    from PIL import Image
    c, links = hub
    blob = os.path.realpath(links['model.safetensors'])
    _flip(blob)
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / 'x.png')
    code = 'import sys; sys.modules["torch"] = None; from vitjax import cli; sys.exit(cli.main(sys.argv[1:]))'
    proc = subprocess.run([sys.executable, '-c', code, 'predict', '--model', NAME, str(tmp_path / 'x.png')],
                          cwd=ROOT, env=hubcache.offline_env(c), capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, (proc.stdout, proc.stderr[-2000:])
    assert len(errors) == 1 and 'is damaged' in errors[0] and proc.stdout == '', proc.stderr[-2000:]
    assert not os.path.exists(blob)


# -- items 6, 7, 8: names ------------------------------------------------------------------------------------
def test_hf_hub_names_of_zoo_tags_are_the_tags(hub, tmp_path, monkeypatch):
    """`hf-hub:timm/<arch>.<tag>` takes the tag's config (Qwen3's projector width), as the timm name does; a
    hub repo as `pretrained=` of its own architecture loads, of another is refused."""
    import vitjax
    c, _ = hub
    qwen = 'qwen3_vit_306m_enc.qwen3_5_4b'
    hubcache.add(c, qwen, depth=1)
    m, v = vitjax.load(f'hf-hub:timm/{qwen}')
    m2, v2 = vitjax.create_model(qwen, pretrained=True)
    assert m.out_features == m2.out_features == 2560 and m == m2
    a, b = _flat(v), _flat(v2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    m, v = vitjax.create_model('deit_tiny_patch16_224', pretrained=f'hf-hub:timm/{NAME}', num_classes=5)
    assert m.num_classes == 5 and m.pretrained_cfg.tag == 'fb_in1k'
    with pytest.raises(ValueError) as e:
        vitjax.create_model('deit_small_patch16_224', pretrained=f'hf-hub:timm/{NAME}')
    assert 'holds a deit_tiny_patch16_224, not a deit_small_patch16_224' in _one_line(e)


def test_pretrained_true_never_looks_at_the_cwd(hub, tmp_path, monkeypatch):
    """A file and a folder named like the timm name in the working directory: `pretrained=True` still means the
    hub; `vitjax.load(NAME)` takes the local path, as documented, and says what hides the name."""
    import vitjax
    monkeypatch.chdir(tmp_path)
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME.split('.')[0]).write_text('not a model')
    ref = _flat(vitjax.create_model(NAME, pretrained=True)[1])
    plain = _flat(vitjax.create_model(NAME.split('.')[0], pretrained=True)[1])  # the arch's default tag
    assert all(np.array_equal(ref[k], plain[k]) for k in ref)
    with pytest.raises(FileNotFoundError, match='pretrained=True'):
        vitjax.load(NAME)


@pytest.mark.parametrize('args', [('deit_tiny_patch16_224',), ('',), ('*',), (['deit_*', 'swin*'],),
                                  ('vit_base_patch16_224.*',), ('vit_base_patch16_224',), ('*.fb_in1k',),
                                  ('*_in1k',), ('beit*', 'beitv2*'), ('vit_*', ['*clip*', '*siglip*', 'vit_so*'])])
def test_list_pretrained_and_list_models_are_timms(args):
    """The names timm lists, of the architectures vitjax holds: '' is everything, a bare architecture matches
    its tags, lists of patterns and exclusions as timm takes them."""
    import timm

    import vitjax
    from vitjax import hub as vhub
    zoo = vhub.zoo()['architectures']
    ref = [n for n in timm.list_pretrained(*args) if n.split('.')[0] in zoo]
    assert ref and vitjax.list_pretrained(*args) == ref
    archs = set(vitjax.list_models())
    assert vitjax.list_models(*args) == [n for n in timm.list_models(*args[:1], exclude_filters=args[1:] and args[1])
                                         if n in archs]


# -- item 11: wrong-typed fields -----------------------------------------------------------------------------
CONFIG_FAULTS = [  # (change to the published config.json, what the one error line names)
    ({'num_classes': None}, 'num_classes=None'),
    ({'num_classes': float('inf')}, 'num_classes=inf'),
    ({'num_classes': -3}, 'num_classes=-3'),
    ({'pretrained_cfg.input_size': 5}, 'pretrained_cfg.input_size=5'),
    ({'pretrained_cfg.mean': ['a', 0, 0]}, 'pretrained_cfg.mean'),
    ({'pretrained_cfg.crop_pct': float('nan')}, 'pretrained_cfg.crop_pct=nan'),
    ({'pretrained_cfg.first_conv': 3}, 'pretrained_cfg.first_conv=3'),
    ({'pretrained_cfg': [1]}, 'pretrained_cfg=[1]'),
    ({'model_args': {'depth': '1'}}, "model_args.depth='1'"),
    ({'model_args': 7}, 'model_args=7'),
    ({'architecture': 5}, 'architecture 5'),
    ({'label_names': 5}, 'label_names=5'),
]


def test_wrong_typed_hub_config_fields_are_one_error(hub):
    import vitjax
    _, links = hub
    good = json.load(open(links['config.json']))
    for change, named in CONFIG_FAULTS:
        cfg = json.loads(json.dumps(good))
        for key, value in change.items():
            *parents, leaf = key.split('.')
            d = cfg
            for p in parents:
                d = d[p]
            d[leaf] = value
        _publish(links['config.json'], json.dumps(cfg).encode(), lfs=False)
        with pytest.raises(ValueError) as e:
            vitjax.load(f'hf-hub:timm/{NAME}')
        msg = _one_line(e)
        assert 'config.json' in msg and named in msg, (change, msg)


def _raw(header, data: bytes = b'\0' * 16) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack('<Q', len(h)) + h + data


HEADER_FAULTS = [
    (['a'], 'the header is a JSON list'),
    ({'w': {'dtype': 'F32', 'shape': [4], 'data_offsets': [0.0, 16.0]}}, 'w: data_offsets=[0.0, 16.0]'),
    ({'w': {'dtype': 'F32', 'shape': 'a', 'data_offsets': [0, 16]}}, "w: shape='a'"),
    ({'w': {'dtype': 'F32', 'shape': [2.5], 'data_offsets': [0, 16]}}, 'w: shape=[2.5]'),
    ({'w': {'dtype': 'Q7', 'shape': [4], 'data_offsets': [0, 16]}}, "w: dtype='Q7'"),
    ({'w': 3}, 'w: dtype=None'),
    ({'w': {'dtype': 'F32', 'shape': [3], 'data_offsets': [0, 16]}}, 'w: data_offsets=[0, 16] do not hold'),
]


def test_wrong_typed_safetensors_headers_are_one_error_and_intact_files_stay(hub):
    import vitjax
    _, links = hub
    for header, named in HEADER_FAULTS:
        blob = _publish(links['model.safetensors'], _raw(header))
        with pytest.raises(ValueError) as e:
            vitjax.load(NAME)
        msg = _one_line(e)
        assert named in msg and links['model.safetensors'] in msg and 'stays in the cache' in msg, (header, msg)
        assert os.path.isfile(blob)


def test_wrong_typed_or_out_of_range_options_are_one_error(hub, tmp_path):
    """The hub route, a model directory and random init: each bad option named, before weights are read."""
    import vitjax
    vitjax.save(tmp_path / 'dir', *vitjax.create_model('deit_tiny_patch16_224', depth=1))
    bad = [dict(num_classes=-1), dict(num_classes=1.5), dict(img_size='a'), dict(img_size=(0, 224)),
           dict(depth='1'), dict(drop_rate=2.0), dict(no_such_field=1)]
    routes = [lambda **kw: vitjax.create_model(NAME, pretrained=True, **kw),
              lambda **kw: vitjax.load(tmp_path / 'dir', **kw),
              lambda **kw: vitjax.create_model('deit_tiny_patch16_224', **kw)]
    for route in routes:
        for kw in bad:
            with pytest.raises(ValueError) as e:
                route(**kw)
            (key, value), = kw.items()
            assert key in _one_line(e), (kw, str(e.value))
    for kw in (dict(in_chans=0), dict(in_chans='3')):
        with pytest.raises(ValueError, match='in_chans'):
            vitjax.create_model(NAME, pretrained=True, **kw)
