"""The `vitjax` console script (installed by pyproject [project.scripts]): every command's output format, on
a converted model and on a model trained by `vitjax train`."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from porting import convert, random_init
from vitjax import cli as vcli

ROOT = Path(__file__).resolve().parent.parent
VITJAX = str(Path(sys.executable).parent / 'vitjax')


def cli(*args, env=None):
    return subprocess.run([VITJAX, *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=900,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1', **(env or {})})


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp('conv')
    ckpt = random_init.save(random_init.create('deit_tiny_patch16_224', seed=5, depth=2), d / 'deit.safetensors')
    proc = cli('convert', '--model', 'deit_tiny_patch16_224', '--checkpoint', ckpt, '--model-arg', 'depth=2',
               '--out', d / 'model')
    assert proc.returncode == 0 and 'parity PASSED' in proc.stdout, proc.stderr[-2000:]
    return d / 'model'


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp('photos')
    rng = np.random.default_rng(0)
    for i, size in enumerate([(320, 240), (200, 260), (64, 64)]):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(d / f'p{i}.jpg')
    return d


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp('trained')
    proc = cli('train', f'--workdir={d / "run"}', '--config.total_steps=40', '--config.warmup_steps=5',
               '--config.log_every=10', '--config.eval_every=40', '--config.model_overrides.depth=1',
               '--config.batch_size=64', f'--config.data_dir={d / "tfds"}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    digits = d / 'digits'
    digits.mkdir()
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    for i in range(4):
        Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).save(digits / f'{y[i]}_{i}.png')
    return d, d / 'run' / 'model', digits


@pytest.mark.slow
def test_predict_json_on_converted_model(converted, photos):
    proc = cli('predict', '--model', converted, photos / 'p0.jpg', photos, '--top', '3', '--json')
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert [Path(r['file']).name for r in out] == ['p0.jpg', 'p0.jpg', 'p1.jpg', 'p2.jpg']
    for r in out:
        probs = [t['probability'] for t in r['top']]
        assert len(r['top']) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert all(set(t) == {'index', 'label', 'probability'} and 0 <= t['index'] < 1000 for t in r['top'])
    assert out[0]['top'] == out[1]['top']
    text = cli('predict', '--model', converted, photos / 'p2.jpg', '--top', '2')
    lines = text.stdout.splitlines()
    assert lines[0].endswith('p2.jpg') and len(lines) == 3 and '%' in lines[1] and '(' in lines[1]


@pytest.mark.slow
def test_predict_uses_trained_class_names(trained):
    _, model_dir, digits = trained
    out = json.loads(cli('predict', '--model', model_dir, digits, '--json').stdout)
    assert len(out) == 4 and all(t['label'] in [str(i) for i in range(10)] for r in out for t in r['top'])


@pytest.mark.parametrize('kind, key, shape', [('pooled', 'pooled', (3, 192)), ('cls', 'cls', (3, 192)),
                                              ('tokens', 'tokens', (3, 197, 192)), ('map', 'map', (3, 14, 14, 192)),
                                              ('intermediates', 'block_1', (3, 14, 14, 192))])
def test_features(converted, photos, tmp_path, capsys, kind, key, shape):
    # In this process (the script's main): the format is the subject here, and the script itself runs `features`
    # and `attention` in test_features_and_attention_on_trained_model.
    assert vcli.main(['features', '--model', str(converted), str(photos), '--kind', kind,
                      '--out', str(tmp_path / 'f.npz')]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['files'] == 3 and report[key] == list(shape)
    f = np.load(tmp_path / 'f.npz')
    assert f[key].shape == shape and [Path(p).name for p in f['files']] == ['p0.jpg', 'p1.jpg', 'p2.jpg']


def test_attention_png(converted, photos, tmp_path, capsys):
    # In this process, as test_features.
    assert vcli.main(['attention', '--model', str(converted), str(photos / 'p1.jpg'),
                      '--out', str(tmp_path / 'a.png')]) == 0
    assert json.loads(capsys.readouterr().out)['grid'] == [14, 14]
    with Image.open(tmp_path / 'a.png') as im:
        assert im.format == 'PNG' and im.size[0] > 2 * im.size[1]  # input + two maps side by side


@pytest.mark.slow
def test_evaluate_equals_training_eval(trained):
    d, model_dir, _ = trained
    proc = cli('evaluate', '--model', model_dir, '--dataset', 'vitjax_digits', '--split', 'test',
               '--data-dir', d / 'tfds')
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert set(result) == {'model', 'dataset', 'split', 'top1', 'top5', 'loss', 'count'}
    summary = json.loads((d / 'run' / 'summary.json').read_text())
    assert result['count'] == 360 and result['top1'] == pytest.approx(summary['test_accuracy'], abs=1e-9)
    assert result['loss'] == pytest.approx(summary['test_loss'], rel=1e-5) and result['top5'] >= result['top1']


@pytest.mark.slow
def test_features_and_attention_on_trained_model(trained, tmp_path):
    _, model_dir, digits = trained
    proc = cli('features', '--model', model_dir, digits, '--kind', 'map', '--out', tmp_path / 'f.npz')
    assert proc.returncode == 0 and json.loads(proc.stdout)['map'] == [4, 4, 4, 96], proc.stderr[-2000:]
    proc = cli('attention', '--model', model_dir, digits / '0_0.png', '--out', tmp_path / 'a.png')
    assert proc.returncode == 0 and json.loads(proc.stdout)['grid'] == [4, 4], proc.stderr[-2000:]


@pytest.mark.slow
def test_evaluate_converted_model_with_new_head(trained, tmp_path, capsys):
    # In this process (porting.convert's and the CLI's main): the `vitjax` script itself converts in `converted`
    # and evaluates in test_evaluate_equals_training_eval.
    d, _, _ = trained
    ckpt = random_init.save(random_init.create('deit_tiny_patch16_224', depth=1), tmp_path / 'deit.safetensors')
    assert convert.main(['--model', 'deit_tiny_patch16_224', '--checkpoint', str(ckpt), '--model-arg', 'depth=1',
                         '--num-classes', '10', '--img-size', '32', '--out', str(tmp_path / 'm')]) == 0
    capsys.readouterr()
    evaluate = ['evaluate', '--model', str(tmp_path / 'm'), '--dataset', 'vitjax_digits', '--data-dir', str(d / 'tfds')]
    assert vcli.main(evaluate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result['count'] == 360 and 0 <= result['top1'] <= result['top5'] <= 1
    assert vcli.main([*evaluate, '--split', 'bogus[']) == 1 and 'error:' in capsys.readouterr().err


@pytest.mark.slow
def test_export_through_cli(converted, tmp_path):
    proc = cli('export', '--model', converted, '--out', tmp_path / 'back.safetensors')
    assert proc.returncode == 0 and (tmp_path / 'back.safetensors').exists(), proc.stderr


@pytest.mark.slow
def test_names_resolve_through_the_cache(converted, photos, tmp_path):
    cache = tmp_path / 'cache'
    shutil.copytree(converted, cache / 'deit_tiny_patch16_224')
    ok = cli('predict', '--model', 'deit_tiny_patch16_224', photos / 'p0.jpg', '--json', env={'VITJAX_CACHE': cache})
    assert ok.returncode == 0 and len(json.loads(ok.stdout)[0]['top']) == 5
    typo = cli('predict', '--model', 'deit_tiyn_patch16_224', photos / 'p0.jpg', env={'VITJAX_CACHE': cache})
    assert typo.returncode == 1 and 'did you mean deit_tiny_patch16_224' in typo.stderr
    offline = cli('predict', '--model', 'deit_small_patch16_224', photos / 'p0.jpg', env={'VITJAX_CACHE': cache})
    # a hub name goes torch-free through huggingface_hub, whose cache does not hold it here (tests/test_hub.py)
    assert offline.returncode == 1 and 'not in the huggingface_hub cache' in offline.stderr, offline.stderr
    assert not (cache / 'deit_small_patch16_224').exists()


def test_bad_inputs(converted, tmp_path, capsys):
    # In this process: an error the script's main does not turn into its exit 1 raises here.
    (tmp_path / 'notes.jpg').write_text('not an image')
    for image, msg in [('missing.jpg', 'no such file or folder'), ('notes.jpg', 'cannot identify image file')]:
        assert vcli.main(['predict', '--model', str(converted), str(tmp_path / image)]) == 1
        assert msg in capsys.readouterr().err
    assert vcli.main(['attention', '--model', str(tmp_path), str(tmp_path / 'notes.jpg'),
                      '--out', str(tmp_path / 'a.png')]) == 1
    assert 'not a vitjax model directory' in capsys.readouterr().err


def test_wheel_carries_the_cli_configs_and_class_names(tmp_path):
    """What a non-editable `pip install` gets: the console script, the presets and the ImageNet names."""
    import zipfile
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '-q', '--no-deps', '--no-build-isolation', '-w', tmp_path,
                    ROOT], check=True, capture_output=True)
    (wheel,) = tmp_path.glob('vitjax-*.whl')
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {'vitjax/cli.py', 'vitjax/train/main.py', 'vitjax/train/trainer.py', 'vitjax/train/configs/default.py',
            'vitjax/train/configs/digits_swin.py',
            'vitjax/labels/imagenet-1k.txt', 'vitjax/labels/imagenet-22k.txt', 'vitjax/weights/timm_vit.py',
            'porting/convert.py'} <= names
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith('entry_points.txt'))).decode()
    assert 'vitjax = vitjax.cli:main' in entry


def _refused(proc, msg):
    return proc.returncode == 1 and proc.stderr.startswith('error:') and msg in proc.stderr and \
        proc.stderr.count('\n') == 1 and not proc.stdout


@pytest.mark.slow
def test_features_out_is_checked_first_and_never_a_users_file(converted, photos, tmp_path, capsys):
    (tmp_path / 'mine.npz').write_bytes(b'my own data')
    (tmp_path / 'link.npz').symlink_to(tmp_path / 'mine.npz')
    (tmp_path / 'dir.npz').mkdir()
    for out, msg in [('mine.npz', 'mine.npz is a file vitjax did not write'), ('dir.npz', 'dir.npz is a directory'),
                     ('link.npz', 'link.npz is a symbolic link'), ('feats', '--out {}/feats: must end in .npz'),
                     ('mine.npz/f.npz', 'mine.npz is not a directory')]:
        proc = cli('features', '--model', converted, photos, '--out', tmp_path / out)
        assert _refused(proc, msg.format(tmp_path)), (out, proc.stderr[-2000:])
    assert _refused(cli('features', '--model', tmp_path / 'typo', photos, '--out', tmp_path / 'f.npz'),
                    'typo: no such model directory')
    old = os.umask(0o022)
    try:
        for _ in range(2):  # the second run replaces what the first one wrote; in this process, as test_features
            assert vcli.main(['features', '--model', str(converted), str(photos),
                              '--out', str(tmp_path / 'f.npz')]) == 0
            assert json.loads(capsys.readouterr().out)['out'] == str(tmp_path / 'f.npz')
    finally:
        os.umask(old)
    assert (tmp_path / 'mine.npz').read_bytes() == b'my own data'
    assert np.load(tmp_path / 'f.npz')['pooled'].shape[0] == 3
    assert sorted(os.listdir(tmp_path)) == ['dir.npz', 'f.npz', 'link.npz', 'mine.npz']  # no temporary left
    assert os.stat(tmp_path / 'f.npz').st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_attention_writes_the_png_it_reports_and_no_other(converted, photos, tmp_path, capsys):
    Image.new('RGB', (4, 4)).save(tmp_path / 'mine.png')
    mine = (tmp_path / 'mine.png').read_bytes()
    (tmp_path / 'd.png').mkdir()
    for out, msg in [('mine.png', 'mine.png is a file vitjax did not write'), ('attn', 'must end in .png'),
                     ('d.png', 'd.png is a directory')]:
        assert _refused(cli('attention', '--model', converted, photos / 'p1.jpg', '--out', tmp_path / out), msg)
    for _ in range(2):  # in this process, as test_features
        assert vcli.main(['attention', '--model', str(converted), str(photos / 'p1.jpg'),
                          '--out', str(tmp_path / 'a.png')]) == 0
        assert json.loads(capsys.readouterr().out)['out'] == str(tmp_path / 'a.png')
    assert (tmp_path / 'mine.png').read_bytes() == mine
    assert sorted(os.listdir(tmp_path)) == ['a.png', 'd.png', 'mine.png']
    with Image.open(tmp_path / 'a.png') as im:
        assert im.format == 'PNG' and im.size[0] > 2 * im.size[1]


def test_a_broken_model_config_is_one_error_line(converted, photos, tmp_path):
    shutil.copytree(converted, tmp_path / 'm')
    cfg = json.loads((tmp_path / 'm' / 'config.json').read_text())
    cfg['pretrained_cfg']['std'] = [0, 0, 0]  # would divide the images by zero: NaN features, exit 0
    cfg['model']['depth'] = 10 ** 6  # would be traced block by block until memory runs out
    (tmp_path / 'm' / 'config.json').write_text(json.dumps(cfg))
    proc = cli('features', '--model', tmp_path / 'm', photos, '--out', tmp_path / 'f.npz')
    assert _refused(proc, 'config.json: invalid model config: depth=1000000: must be in 1..1000; '
                          'pretrained_cfg.std=(0, 0, 0): must be > 0'), proc.stderr[-2000:]
    assert not (tmp_path / 'f.npz').exists()


def test_predict_and_features_stream_a_folder_batch_by_batch(tmp_path, capsys):
    """Memory is bounded by the batch (32), not the folder: 64 tiny PNGs, each 0.6 MB once preprocessed to
    224x224 float32, are never all held at once (two batches at most: jax lets go of a batch's input a moment
    after its run). Outputs are what the whole folder at once gave (same batches)."""
    import tracemalloc
    import zipfile
    import vitjax
    from vitjax import inference
    model = vitjax.registry.build_model('vit_tiny_patch16_224', 3, None, patch_size=32, depth=1, embed_dim=32,
                                        num_heads=2)
    rng = np.random.default_rng(0)  # random params without compiling an init
    variables = {'params': vitjax.io.unflatten({k: 0.1 * rng.standard_normal(s).astype(np.float32)
                                                for k, s in vitjax.io.param_shapes(model).items()})}
    vitjax.save(tmp_path / 'm', model, variables)
    folder = tmp_path / 'imgs'
    folder.mkdir()
    for i in range(64):
        Image.fromarray(rng.integers(0, 255, (6, 8, 3), np.uint8)).save(folder / f'{i:03d}.png')
    image, outs = 224 * 224 * 3 * 4, []
    for args in (['predict', '--json'], ['features', '--kind', 'tokens', '--out', str(tmp_path / 'f.npz')]):
        tracemalloc.start()
        try:
            assert vcli.main([args[0], '--model', str(tmp_path / 'm'), str(folder), *args[1:]]) == 0
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 3 * 32 * image, f'{args[0]}: peak {peak / image:.0f} preprocessed images, batches of 32'
        outs.append(json.loads(capsys.readouterr().out))
    files = vcli.expand_images([str(folder)])
    x = inference.preprocess(files, model)
    feats = inference.features(model, variables, x, 'tokens')  # the whole folder at once, as before
    logits = np.asarray(model.apply(variables, feats['tokens'], method=model.forward_head))
    assert [r['file'] for r in outs[0]] == files
    assert [[t['index'] for t in r['top']] for r in outs[0]] == np.argsort(-logits, 1, kind='stable')[:, :3].tolist()
    np.savez(tmp_path / 'ref.npz', files=np.asarray(files), **feats)
    with zipfile.ZipFile(tmp_path / 'f.npz') as a, zipfile.ZipFile(tmp_path / 'ref.npz') as b:
        assert a.namelist() == b.namelist() and all(a.read(n) == b.read(n) for n in b.namelist())
    assert outs[1]['tokens'] == [64, 50, 32]
