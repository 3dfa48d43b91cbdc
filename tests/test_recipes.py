"""Every recipe of docs/recipes.md runs as written (bash -e, offline) and produces what the page says it does.

Each recipe takes minutes here (full-size models converted with parity, or several train.py processes), so they run
in `make test-zoo` with the full-size parity rows; `make test` keeps what each of them is built from (conversion,
`--config.init` fine-tunes with position-embedding resampling, frozen backbones, folders, evaluate, the presets)
and the figures script."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
RECIPE = re.compile(r'<!-- recipe: (\w+) -->\n```bash\n(.*?)```', re.S)
RECIPES = dict(RECIPE.findall((ROOT / 'docs' / 'recipes.md').read_text()))


def run(name, tmp_path):
    """The block in a scratch directory that looks like the repository root (configs/, train.py)."""
    for entry in ('configs', 'train.py'):
        (tmp_path / entry).symlink_to(ROOT / entry)
    (tmp_path / 'out').mkdir()
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}',
           'HF_HUB_OFFLINE': '1', 'VITJAX_CACHE': str(tmp_path / 'cache')}
    proc = subprocess.run(['bash', '-e', '-c', RECIPES[name]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert proc.returncode == 0, f'{name}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}'
    return proc


def test_all_recipes_are_tested():
    assert set(RECIPES) == {'zoo', 'deit', 'scratch', 'paper', 'headless', 'dinov3', 'qwen3vl'}


@pytest.mark.zoo  # full-size models converted with parity: the exhaustive tier
def test_zoo(tmp_path):
    proc = run('zoo', tmp_path)
    assert 'parity PASSED' in proc.stdout and proc.stdout.count('%') >= 5
    assert np.load(tmp_path / 'out/vitb_cls.npz')['cls'].shape == (1, 768)
    assert np.load(tmp_path / 'out/vitb_map.npz')['map'].shape == (1, 14, 14, 768)


@pytest.mark.zoo  # minutes of train.py runs whose parts make test covers (docs/testing.md)
def test_deit_head_then_full(tmp_path):
    run('deit', tmp_path)
    import vitjax
    model, variables = vitjax.load(tmp_path / 'runs/deit_full/model')
    assert (model.img_size, model.num_classes) == (32, 10)
    assert variables['params']['pos_embed'].shape == (1, 1 + 2 * 2, 192)
    head = json.loads((tmp_path / 'runs/deit_head/summary.json').read_text())
    full = json.loads((tmp_path / 'runs/deit_full/summary.json').read_text())
    assert head['test_accuracy'] > 0.1 and full['test_accuracy'] > 0.1  # chance is 0.1


@pytest.mark.zoo  # minutes of train.py runs whose parts make test covers (docs/testing.md)
def test_scratch_then_frozen(tmp_path):
    proc = run('scratch', tmp_path)
    scratch = json.loads((tmp_path / 'runs/scratch/summary.json').read_text())
    assert scratch['test_accuracy'] > 0.6
    evaluation = json.loads(proc.stdout[proc.stdout.index('{\n  "model"'):proc.stdout.index('\n}\n') + 2])
    from vitjax.images import folder_splits
    held_out = folder_splits(str(tmp_path / 'out/digit_folder')).splits['test'][0]
    assert evaluation['split'] == 'test' and evaluation['count'] == len(held_out) == 179  # 10% of each digit
    import vitjax
    from vitjax.io import flatten
    _, before = vitjax.load(tmp_path / 'runs/scratch/model')
    _, after = vitjax.load(tmp_path / 'runs/frozen/model')
    a, b = flatten(before['params']), flatten(after['params'])
    assert all(np.array_equal(a[k], b[k]) for k in a if not k.startswith('head'))  # the backbone stayed frozen


@pytest.mark.zoo  # minutes of train.py runs whose parts make test covers (docs/testing.md)
def test_paper_recipe(tmp_path):
    run('paper', tmp_path)
    config = json.loads((tmp_path / 'runs/paper/config.json').read_text())
    assert (config['decay'], config['weight_decay'], config['clip_norm'], config['drop_rate']) == ('linear', 0.1,
                                                                                                  1.0, 0.1)
    assert (tmp_path / 'runs/paper/curves.png').stat().st_size > 10_000


@pytest.mark.zoo  # full-size models converted with parity: the exhaustive tier
def test_headless_features(tmp_path):
    run('headless', tmp_path)
    assert np.load(tmp_path / 'out/dino_pooled.npz')['pooled'].shape == (1, 384)
    assert np.load(tmp_path / 'out/dino_map.npz')['map'].shape == (1, 16, 16, 384)
    assert (tmp_path / 'out/dino_attention.png').stat().st_size > 10_000


@pytest.mark.zoo  # full-size models converted with parity: the exhaustive tier
def test_dinov3_features(tmp_path):
    proc = run('dinov3', tmp_path)
    assert 'parity PASSED' in proc.stdout
    assert np.load(tmp_path / 'out/dinov3_pooled.npz')['pooled'].shape == (1, 768)
    assert np.load(tmp_path / 'out/dinov3_map.npz')['map'].shape == (1, 16, 16, 768)
    assert (tmp_path / 'out/dinov3_attention.png').stat().st_size > 10_000
    assert proc.stdout.strip().splitlines()[-1] == '(1, 285, 768)'


@pytest.mark.zoo  # full-size models converted with parity: the exhaustive tier
def test_qwen3vl_tokens(tmp_path):
    proc = run('qwen3vl', tmp_path)
    assert 'parity PASSED' in proc.stdout
    assert np.load(tmp_path / 'out/qwen3vl_map.npz')['map'].shape == (1, 28, 28, 1024)
    assert proc.stdout.strip().splitlines()[-1] == '(1, 280, 2560)'


@pytest.mark.slow
def test_readme_figures_script(tmp_path):
    """`python docs/figures.py MODEL OUT` (the figures of docs/cli.md) on a (briefly) trained digits model."""
    env = {**os.environ, 'PATH': f'{Path(sys.executable).parent}{os.pathsep}{os.environ["PATH"]}'}
    train = subprocess.run(['vitjax', 'train', f'--workdir={tmp_path / "run"}', '--config.total_steps=20',
                            '--config.warmup_steps=5', '--config.model_overrides.depth=1', '--config.eval_every=20',
                            f'--config.data_dir={tmp_path / "tfds"}'], env=env, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    proc = subprocess.run([sys.executable, 'docs/figures.py', tmp_path / 'run' / 'model', tmp_path / 'figs'], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all((tmp_path / 'figs' / f).stat().st_size > 5_000 for f in ('digits_predictions.png',
                                                                        'digits_attention.png'))
