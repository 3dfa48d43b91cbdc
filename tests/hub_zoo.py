"""Every architecture of the zoo through the torch-free hub path (shared by test_hub_zoo_*.py, test_hub_full.py).

Each architecture, with its first tag, is built in timm at reduced depth (full size in test_hub_full.py),
published into a hub cache with timm's `save_for_hf`, loaded torch-free in one subprocess per test file, and
compared with timm's logits. Its hub config must equal what `porting.convert`'s reader reads off the same
timm model, and its params must be bit for bit the ones `porting.convert`'s table makes from that model
(compared by a SHA-256 per tensor, so the subprocess need not send the weights back)."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

from porting import hubcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARTS = 4


def _zoo() -> dict:
    return json.load(open(os.path.join(ROOT, 'vitjax', 'zoo.json')))


def _cost(config: dict) -> int:
    """width x tokens: what one block costs, to deal the architectures evenly over the test files."""
    img = config.get('img_size', 224)
    h, w = (img, img) if isinstance(img, int) else img
    p = config.get('patch_size', 16)
    p = p if isinstance(p, int) else p[0]
    return config.get('embed_dim', 768) * (h // p) * (w // p)


def part(i: int, n: int) -> list[str]:
    """Part `i` of `n` of every zoo architecture as `arch.tag`, its first tag on the hub (else its first), dealt
    by cost so the parts take alike."""
    z = _zoo()
    zoo, tags = z['architectures'], z['tags']
    archs = sorted(zoo, key=lambda a: (_cost(zoo[a]['config']), a))
    first = {a: next((t for t in zoo[a]['tags'] if tags[f'{a}.{t}'].get('hf_hub_id')), zoo[a]['tags'][0])
             for a in archs}
    return sorted(f'{a}.{first[a]}' for a in archs[i::n])


def reduced(family: str) -> dict:
    return {'depths': (1, 1, 2, 1)} if family == 'swin' else {'depth': 1}


def _digests(flat: dict) -> dict:
    return {k: hashlib.sha256(np.ascontiguousarray(v, np.float32)).hexdigest() for k, v in flat.items()}


def run(cache, names: list[str], full_size: bool = False) -> dict:
    """Publish `names` into `cache`, load them torch-free in one process;
    {name: (logits, ref, hub_cfg, convert_cfg, hub param digests, convert param digests)}."""
    import torch

    from porting.sources import source_of
    from vitjax.io import flatten
    zoo = _zoo()['architectures']
    refs, inputs = {}, {}
    for i, name in enumerate(names):
        family = zoo[name.split('.')[0]]['family']
        paths = hubcache.add(cache, name, seed=i, **({} if full_size else reduced(family)))
        m = paths.pop('model')
        _, h, w = m.pretrained_cfg['input_size']
        x = np.random.default_rng(i).standard_normal((1, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            ref = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        src = source_of(m, 'timm')
        config = src.model_config(m)
        refs[name] = ref, _digests(flatten(src.from_state(src.state_of(m), config)))
        inputs[name] = (x, json.loads(json.dumps(config)))
        del m
    np.savez(os.path.join(str(cache), 'in.npz'), **{n: x for n, (x, _) in inputs.items()})
    code = '''
import sys, json
for m in ('torch', 'timm', 'torchvision'):
    sys.modules[m] = None
import numpy as np, jax
jax.config.update('jax_default_matmul_precision', 'highest')
import vitjax
from vitjax import hub
from vitjax.io import flatten
sys.path.insert(0, 'tests')
from hub_zoo import _digests
inp, out, cfgs = dict(np.load(sys.argv[1])), {}, {}
for name, x in inp.items():
    # timm has a few tags only as a URL to a pickle: their architectures load from a repo named directly
    name_or_repo = name if hub.zoo()['tags'][name].get('hf_hub_id') else f'hf-hub:timm/{name}'
    model, variables = (vitjax.create_model(name, pretrained=True) if name == name_or_repo
                        else vitjax.load(name_or_repo))
    out[name] = np.asarray(jax.jit(model.apply)(variables, x))
    cfgs[name] = hub.read_config(name_or_repo)['model'], _digests(jax.tree.map(np.asarray, flatten(variables['params'])))
    del model, variables
np.savez(sys.argv[2], **out)
json.dump(cfgs, open(sys.argv[3], 'w'))
'''
    files = [os.path.join(str(cache), f) for f in ('in.npz', 'out.npz', 'cfg.json')]
    proc = subprocess.run([sys.executable, '-c', code, *files], cwd=ROOT, env=hubcache.offline_env(cache),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out, cfgs = dict(np.load(files[1])), json.load(open(files[2]))
    return {n: (out[n], refs[n][0], cfgs[n][0], inputs[n][1], cfgs[n][1], refs[n][1]) for n in names}


def check(results: dict, name: str) -> None:
    logits, ref, hub_cfg, convert_cfg, hub_params, convert_params = results[name]
    assert hub_cfg == convert_cfg, {k: (hub_cfg.get(k), convert_cfg.get(k)) for k in set(hub_cfg) | set(convert_cfg)
                                    if hub_cfg.get(k) != convert_cfg.get(k)}
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert logits.shape == ref.shape
    diff = float(np.abs(logits - ref).max())
    assert diff <= tol, f'{name}: max |dlogit| {diff:.3g} > {tol:.3g}'
    assert hub_params.keys() == convert_params.keys()
    assert [k for k in hub_params if hub_params[k] != convert_params[k]] == []


def tests(names: list[str], full_size: bool = False):
    """(the module fixture, the test) over `names`, for a test file to assign: one subprocess per file, and
    one file per xdist worker (--dist loadfile)."""
    import pytest

    @pytest.fixture(scope='module')
    def results(tmp_path_factory):
        return run(tmp_path_factory.mktemp('hf'), names, full_size)

    @pytest.mark.slow
    @pytest.mark.parametrize('name', names)
    def test_loads_torch_free_with_timm_logits_and_convert_params(results, name):
        check(results, name)
    return results, test_loads_torch_free_with_timm_logits_and_convert_params
