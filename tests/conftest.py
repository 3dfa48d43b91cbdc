"""Test-session setup shared by every test module.

Import order matters: importing torchvision (which timm pulls in) after tensorflow segfaults the process,
so torch and timm are imported here, before any test module can import tensorflow.
"""
import functools
import os
import pathlib

import numpy as np
import pytest
import timm  # noqa: F401
import torch  # noqa: F401

# One persistent XLA compilation cache for this process, the xdist workers and every train.py subprocess they
# start (they inherit the environment): dozens of tests compile the same small train steps, and a cache hit
# skips XLA's compile (~10 s of a 22 s train.py run here). The max size turns on jax's file lock, which the
# parallel workers need. Entries are keyed by the HLO, jax version and flags, so a hit is the same program.
_CACHE = pathlib.Path(__file__).resolve().parent.parent / '.pytest_cache' / 'jax-compilation-cache'
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(_CACHE))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.1')  # not the many tiny eager-op programs
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))

import jax  # noqa: E402

# Parity needs true f32 matmuls (TPU/GPU default to bf16 passes); a no-op on CPU but kept for GPU runs.
jax.config.update('jax_default_matmul_precision', 'highest')


def port(timm_model):
    """(vitjax model, variables) for a timm model, through the public porting functions."""
    from porting.sources import source_of
    source = source_of(timm_model, 'timm')
    cfg = source.torch_config(timm_model)
    return source.module(cfg), {'params': source.from_state(timm_model.state_dict(), cfg)}


def timm_model(name, seed=0, **kwargs):
    from porting.random_init import create
    return create(name, seed=seed, **kwargs)


def images(model, batch=2, seed=0, size=None):
    from vitjax.registry import img_size_of
    h, w = size or img_size_of(model)
    return np.random.default_rng(seed).standard_normal((batch, h, w, model.in_chans)).astype(np.float32)


def run_timm(m, x, fn=None):
    m.eval()
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        return (fn or m)(t) if fn is None else fn(m, t)


def jit_apply(model, **kw):
    """`model.apply` with fixed keyword arguments (method, flags) as one jitted function of (variables, x).

    Eager apply compiles and dispatches every op on its own, several times slower on XLA:CPU than one compile;
    the variables stay arguments because closed-over arrays get baked into the program as constants (slower)."""
    return jax.jit(functools.partial(model.apply, **kw))


def fine_tune_family(tmp_path, name, model_args, image_size, epochs=4, convert_args=()):
    """A family's whole user path: a timm random-init model (`model_args`: its reduced size) through
    `porting.convert`, `train.py --config.init=DIR` (in this process) on the digits at `image_size`, `vitjax
    features` / `vitjax attention` on the fine-tuned model, and `porting.export` of it back to timm with parity.
    Asserts that the loss falls and the test accuracy beats chance (0.1) clearly; returns (train losses,
    summary.json). `convert_args`: more `porting.convert` flags (e.g. --img-size for a tower that keeps no size of
    its own)."""
    import json
    from PIL import Image
    from porting import convert, export, random_init
    from vitjax import cli
    src = random_init.save(random_init.create(name, seed=4, **model_args), tmp_path / 'm.safetensors')
    args = [a for k, v in model_args.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), '--out', str(tmp_path / 'init'), *args,
                         *convert_args]) == 0
    from trainrun import train
    proc = train(f'--workdir={tmp_path / "run"}', f'--config.init={tmp_path / "init"}',
                 f'--config.image_size={image_size}', f'--config.num_epochs={epochs}', '--config.warmup_steps=10',
                 '--config.lr=5e-4', '--config.log_every=5', '--config.eval_every=1000',
                 '--config.checkpoint_every=1000', f'--config.data_dir={tmp_path / "tfds"}')
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
    losses = [r['loss'] for r in lines if r['split'] == 'train']
    summary = json.loads((tmp_path / 'run' / 'summary.json').read_text())
    print(name, 'losses', losses[0], losses[-1], 'test accuracy', summary['test_accuracy'])
    assert losses[-1] < 0.8 * losses[0] and summary['test_accuracy'] > 0.3, (losses, summary)
    model = str(tmp_path / 'run' / 'model')
    import vitjax
    tuned, _ = vitjax.load(model)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), np.uint8)).save(tmp_path / 'x.png')
    assert cli.main(['features', '--model', model, str(tmp_path / 'x.png'), '--kind', 'map',
                     '--out', str(tmp_path / 'f.npz')]) == 0
    grid = tuned.token_grid(image_size, image_size)  # a hybrid's CNN strides come before its patches
    assert np.load(tmp_path / 'f.npz')['map'].shape == (1, *grid, getattr(tuned, 'num_features', tuned.embed_dim))  # SAM: the neck's
    assert cli.main(['attention', '--model', model, str(tmp_path / 'x.png'), '--out', str(tmp_path / 'a.png')]) == 0
    # back to PyTorch at the size it was fine-tuned at, with parity
    assert export.main(['--model', model, '--out', str(tmp_path / 'tuned.safetensors')]) == 0
    return losses, summary


def convert_and_export(tmp_path, name, architecture, model_args=None, tolerance=1e-5, convert_args=()):
    """A timm random-init safetensors file -> `python -m porting.convert` (parity at `tolerance`) -> vitjax.load ->
    `porting.export` -> the same tensors, bit for bit; returns (config.json's model fields, model, variables)."""
    import json
    import vitjax
    from safetensors.numpy import load_file
    from porting import convert, export, random_init
    model_args = dict(depth=2) if model_args is None else model_args
    src = random_init.save(random_init.create(name, seed=2, **model_args), tmp_path / 'm.safetensors')
    out = tmp_path / 'out'
    args = [a for k, v in model_args.items() for a in ('--model-arg', f'{k}={v}')]
    assert convert.main(['--model', name, '--checkpoint', str(src), *args, *convert_args, '--out', str(out),
                         '--tolerance', str(tolerance)]) == 0
    saved = json.loads((out / 'config.json').read_text())
    assert saved['architecture'] == architecture
    assert json.loads((out / 'parity.json').read_text())['passed']
    model, variables = vitjax.load(out)
    back = tmp_path / 'back.safetensors'
    assert export.main(['--model', str(out), '--out', str(back), '--tolerance', str(tolerance)]) == 0
    a, b = load_file(str(src)), load_file(str(back))
    assert sorted(a) == sorted(b)
    assert all(a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a)
    return saved['model'], model, variables


def full_size_matches_registry(tmp_path, name, tolerance=1e-5, model_args=None, img_size=None):
    """`name` at full depth and width (`model_args`: only what the input needs, e.g. a smaller img_size) through
    `porting.convert`, and the registry's config for the name equals the converted one; returns the model. `img_size`:
    converted with --img-size (a tower that keeps no size of its own)."""
    import vitjax
    from porting import convert, random_init
    from vitjax.models import model_config
    from vitjax.registry import build_model
    model_args = model_args or {}
    ckpt = random_init.save(random_init.create(name, seed=3, **model_args), tmp_path / 'm.safetensors')
    args = [a for k, v in model_args.items() for a in ('--model-arg', f'{k}={v}')]
    sized = ['--img-size', str(img_size)] if img_size else []
    assert convert.main(['--model', name, '--checkpoint', str(ckpt), *args, *sized, '--out', str(tmp_path / 'out'),
                         '--tolerance', str(tolerance)]) == 0
    model, _ = vitjax.load(tmp_path / 'out')
    sized = dict(img_size=img_size) if img_size else {}
    assert model_config(model) == model_config(build_model(name, num_classes=model.num_classes, **model_args, **sized))
    return model


def timm_attention_weights(tm, x, block=0):
    """The softmax weights of timm's block `block` (its explicit, non-fused path) on NHWC images `x`."""
    got = {}
    attn = tm.blocks[block].attn
    fused, attn.fused_attn = attn.fused_attn, False
    hook = attn.attn_drop.register_forward_hook(lambda m, i, o: got.setdefault('w', o))
    try:
        run_timm(tm, x)
    finally:
        hook.remove()
        attn.fused_attn = fused
    return got['w'].numpy()


def tower_attention_matches_timm(tm, model, variables, x, grid, tol=1e-5):
    """A VLM tower's attention weights of its first two blocks equal timm's, and `inference.attention_maps` gives
    its rollout over the (H, W) patch `grid`."""
    from vitjax import inference
    _, state = jax.jit(lambda v, x: model.apply(v, x, mutable=['intermediates']))(variables, x)
    for i in (0, 1):
        ours = np.asarray(state['intermediates'][f'blocks_{i}']['attn']['attn'][0])
        ref = timm_attention_weights(tm, x, block=i)
        assert max_diff(ours.reshape(ref.shape), ref) < tol
    assert inference.attention_maps(model, variables, x)['rollout'].shape == (x.shape[0], *grid)


def check_scan_and_remat(model, variables, x, ref, tol, train=True):
    """scan_blocks + grad_checkpointing give `ref` (timm's logits) and the unrolled model's gradients (in train
    mode unless `train=False`: a model that always drops out in training, as timm's RelPosMlp does, would draw
    other dropout masks in the scan than unrolled)."""
    import jax.numpy as jnp
    from vitjax.models.vit import stack_blocks, unstack_blocks
    scan = model.clone(scan_blocks=True, grad_checkpointing=True)
    stacked = {'params': stack_blocks(variables['params'], model.depth)}
    assert max_diff(jax.jit(scan.apply)(stacked, x), ref) < tol * max(1, np.abs(ref).max())
    loss = lambda m: lambda p: jnp.sum(m.apply({'params': p}, x, train=train) ** 2)
    g0 = jax.jit(jax.grad(loss(model)))(variables['params'])
    g1 = unstack_blocks(jax.jit(jax.grad(loss(scan)))(stacked['params']))
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        assert max_diff(a, b) <= 1e-5 * max(1, float(jnp.abs(a).max()))


def max_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max())


@pytest.fixture
def tiny_vit():
    return dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)


# -- scheduling over the two xdist workers ----------------------------------------------------------------------
# Files whose tests share module fixtures stay on one worker (--dist loadfile); the recipes (docs/) share none and
# run minutes each, so each is a unit of its own. Units start longest first, in the order of the last fresh-clone
# run's per-file times (`python -m benchmarks.suite_durations`), so that the workers finish together instead of
# one running a long file alone at the end. Files not named here follow, in file order.
SPLIT_PER_TEST = ('tests/test_recipes.py',)
LONGEST_FIRST = ('test_train_faults', 'test_make_train', 'test_recipes', *(f'test_hub_zoo_{i}' for i in range(4)),
                 'test_distributed', 'test_swin', 'test_train', 'test_hybrid_vit', 'test_cli', 'test_hub_zoo_distinct',
                 'test_swin_v2', 'test_parallel', 'test_vit', 'test_eva', 'test_hub', 'test_storage', 'test_train_step',
                 'test_sam', 'test_naflex', 'test_relpos_vit', 'test_families', 'test_io', 'test_convert_cli',
                 'test_bench', 'test_precision', 'test_qwen3_vit', 'test_beit', 'test_optim', 'test_preprocess_modes',
                 'test_gemma4_vit', 'test_deepseek_vit', 'test_registry', 'test_input_pipeline', 'test_folder',
                 'test_torchvision', 'test_inference', 'test_model_faults')


def _unit(nodeid: str) -> str:
    path = nodeid.split('::', 1)[0]
    return nodeid if path.endswith(SPLIT_PER_TEST) else path


def pytest_collection_modifyitems(config, items):
    rank = lambda item: next((i for i, name in enumerate(LONGEST_FIRST) if item.path.stem == name),
                             len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: tests keep their order inside a file
    if not any(d.platform == 'gpu' for d in jax.devices()):
        skip = pytest.mark.skip(reason='needs a GPU (jax sees none)')
        for item in items:
            if 'gpu' in item.keywords:
                item.add_marker(skip)


try:
    from xdist.scheduler import LoadFileScheduling

    class _Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid):
            return _unit(nodeid)

    def pytest_xdist_make_scheduler(config, log):
        if config.getoption('dist') == 'loadfile':
            # xdist would otherwise re-sort the units by test count, which puts each one-test recipe last
            config.option.loadscopereorder = False
            return _Scheduling(config, log)
except ImportError:  # pytest-xdist not installed: plain serial pytest
    pass
