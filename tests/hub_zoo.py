"""The zoo through the torch-free hub path, one architecture per option set (shared by test_hub_zoo_*.py).

The name tables and readers depend on an architecture's options, not on its sizes: the zoo's 224
architectures fall into a few dozen option sets (the config without widths, depths, heads, patch and image
sizes), and the smallest architecture of each is built in timm at reduced depth, published into a hub cache
with timm's `save_for_hf`, loaded torch-free in one subprocess, and compared with timm's logits. Its hub config
must equal what `porting.convert`'s reader reads off the same timm model, so the params, made by the same
table from the same file, are `porting.convert`'s bit for bit."""
import json
import os
import subprocess
import sys

import numpy as np
import torch

from porting import hubcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {'embed_dim', 'depth', 'depths', 'num_heads', 'img_size', 'patch_size', 'num_classes', 'window_size',
         'mlp_ratio', 'rope_ref_feat_shape', 'attn_pool_num_heads', 'reg_tokens', 'rope_temperature'}


def representatives() -> list[str]:
    """The cheapest architecture (width x tokens) of each option set, as `arch.default_tag`, sorted."""
    zoo = json.load(open(os.path.join(ROOT, 'vitjax', 'zoo.json')))
    groups = {}
    for arch, row in zoo['architectures'].items():
        c = row['config']
        key = (row['family'], json.dumps({k: v for k, v in c.items() if k not in SIZES}, sort_keys=True))
        img = c.get('img_size', 224)
        h, w = (img, img) if isinstance(img, int) else img
        p = c.get('patch_size', 16)
        p = p if isinstance(p, int) else p[0]
        cost = (c.get('embed_dim', 768), h * w // (p * p), arch)
        groups[key] = min(groups.get(key, cost), cost)
    return sorted(f'{a}.{zoo["architectures"][a]["tags"][0]}' for *_, a in groups.values())


def reduced(family: str) -> dict:
    return {'depths': (1, 1, 2, 1)} if family == 'swin' else {'depth': 1}


def run(cache, names: list[str]) -> dict:
    """Publish `names` into `cache`, load them torch-free in one process; {name: (logits, ref, hub_cfg, cfg)}."""
    from porting.sources import source_of
    zoo = json.load(open(os.path.join(ROOT, 'vitjax', 'zoo.json')))
    refs, inputs = {}, {}
    for i, name in enumerate(names):
        family = zoo['architectures'][name.split('.')[0]]['family']
        paths = hubcache.add(cache, name, seed=i, **reduced(family))
        m = paths['model']
        _, h, w = m.pretrained_cfg['input_size']
        x = np.random.default_rng(i).standard_normal((1, h, w, 3)).astype(np.float32)
        with torch.no_grad():
            refs[name] = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
        src = source_of(m, 'timm')
        inputs[name] = (x, json.loads(json.dumps(src.model_config(m))))
    np.savez(os.path.join(str(cache), 'in.npz'), **{n: x for n, (x, _) in inputs.items()})
    code = '''
import sys, json
for m in ('torch', 'timm', 'torchvision'):
    sys.modules[m] = None
import numpy as np, jax
jax.config.update('jax_default_matmul_precision', 'highest')
import vitjax
from vitjax import hub
inp, out, cfgs = dict(np.load(sys.argv[1])), {}, {}
for name, x in inp.items():
    model, variables = vitjax.create_model(name, pretrained=True)
    out[name] = np.asarray(jax.jit(model.apply)(variables, x))
    cfgs[name] = hub.read_config(name)['model']
np.savez(sys.argv[2], **out)
json.dump(cfgs, open(sys.argv[3], 'w'))
'''
    files = [os.path.join(str(cache), f) for f in ('in.npz', 'out.npz', 'cfg.json')]
    proc = subprocess.run([sys.executable, '-c', code, *files], cwd=ROOT, env=hubcache.offline_env(cache),
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out, cfgs = dict(np.load(files[1])), json.load(open(files[2]))
    return {n: (out[n], refs[n], cfgs[n], inputs[n][1]) for n in names}


def check(results: dict, name: str) -> None:
    logits, ref, hub_cfg, convert_cfg = results[name]
    assert hub_cfg == convert_cfg, {k: (hub_cfg.get(k), convert_cfg.get(k)) for k in set(hub_cfg) | set(convert_cfg)
                                    if hub_cfg.get(k) != convert_cfg.get(k)}
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert logits.shape == ref.shape
    diff = float(np.abs(logits - ref).max())
    assert diff <= tol, f'{name}: max |dlogit| {diff:.3g} > {tol:.3g}'


def half(i: int):
    """(names, the module fixture, the test) for half `i` of 2: each test_hub_zoo_<i>.py assigns them, one file
    per xdist worker (--dist loadfile keeps a file on one worker)."""
    import pytest
    names = representatives()[i::2]

    @pytest.fixture(scope='module')
    def results(tmp_path_factory):
        return run(tmp_path_factory.mktemp('hf'), names)

    @pytest.mark.slow
    @pytest.mark.parametrize('name', names)
    def test_loads_torch_free_with_timm_logits_and_convert_config(results, name):
        check(results, name)
    return names, results, test_loads_torch_free_with_timm_logits_and_convert_config
