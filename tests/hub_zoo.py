"""Every architecture of the zoo through the torch-free hub path (shared by test_hub_zoo_*.py, test_hub_full.py).

Each architecture, with its first tag, is built in timm at reduced depth (the widest also at half width; `make
test`'s one per option set at most `SMALL` wide; full size in test_hub_full.py) as its test runs, published into
a hub cache with timm's `save_for_hf`, loaded torch-free by one worker process per test file (one repo on disk at a
time), and compared with timm's logits. Its hub config must equal what `porting.convert`'s reader reads off the same
timm model, and its params must be bit for bit the ones `porting.convert`'s table makes from that model
(compared by a SHA-256 per tensor, so the worker need not send the weights back), and `porting.export`'s table must
give timm's tensors back from those params bit for bit. This is the conversion test of every architecture; the
family test files convert through the CLI one architecture per distinct structure."""
import hashlib
import json
import os
import subprocess
import sys

import numpy as np

import hubcache

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


def _shape(v):
    """A config value with its numbers blanked: sizes and constants change no code path, options do."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return '#'
    if isinstance(v, list):
        return [_shape(x) for x in v] if not v or not all(_shape(x) == '#' for x in v) else '#list'
    return v


def distinct() -> list[str]:
    """The cheapest architecture of each distinct option set of the zoo (family, and every config field with its
    numbers blanked), as `arch.tag` like `part`: what `make test` sweeps, at `small` sizes; `make test-zoo` sweeps
    them all."""
    z = _zoo()
    zoo, tags = z['architectures'], z['tags']
    groups = {}
    for a in sorted(zoo, key=lambda a: (_work(zoo[a]['family'], zoo[a]['config']), _cost(zoo[a]['config']), a)):
        key = (zoo[a]['family'], json.dumps({k: _shape(v) for k, v in sorted(zoo[a]['config'].items())}))
        groups.setdefault(key, a)
    first = lambda a: next((t for t in zoo[a]['tags'] if tags[f'{a}.{t}'].get('hf_hub_id')), zoo[a]['tags'][0])
    return sorted(f'{a}.{first(a)}' for a in groups.values())


def _work(family: str, config: dict) -> float:
    """Roughly what one architecture costs the sweep at its own widths (what `small` keeps): building, writing
    and converting the weights goes with the parameters (a block's, and a head's: a 21k-class head outweighs a
    block), the forwards with the tokens too."""
    config = dict(config, **reduced(family, config))
    img = config.get('img_size', 224)
    h, w = (img, img) if isinstance(img, int) else img
    p = config.get('patch_size', 16)
    p = p if isinstance(p, int) else p[0]
    width = config.get('embed_dim', 768)
    out = width * 2 ** (len(config.get('depths') or [0]) - 1)  # a Swin's last stage
    heads = (config.get('num_classes') or 0) + (config.get('out_features') or 0)
    return 12 * width ** 2 * (1 + (h // p) * (w // p) / 256) + heads * out


WIDEST = 1536  # wider plain towers (AIMv2-1B/3B, ViT-gigantic, ViT-7B) are tested at half width, same head width


def reduced(family: str, config: dict) -> dict:
    if family == 'sam':  # a window block and a global one (the name's indices are past a reduced depth)
        return {'depth': 2, 'global_attn_indexes': [1]}
    if family in ('swin', 'swinv2'):
        return {'depths': (1, 1, 2, 1)}
    if family in ('vit', 'eva') and config.get('embed_dim', 0) > WIDEST:
        return {'depth': 1, 'embed_dim': config['embed_dim'] // 2, 'num_heads': config['num_heads'] // 2}
    return {'depth': 1}


SMALL = 384  # `make test`'s width: each wider tower halves its width and heads (same head width) down to it


def small(family: str, config: dict) -> dict:
    """`reduced`, at most SMALL wide where the heads halve evenly (a head's width, the option set, the tokens
    kept), and Gemma 4's position table as long as its grid: `make test`'s one architecture per option set.
    Sizes change no code path; the time goes with them."""
    args = reduced(family, config)
    width, heads = args.get('embed_dim', config.get('embed_dim')), args.get('num_heads', config.get('num_heads'))
    if family in ('swin', 'swinv2') or not isinstance(width, int) or not isinstance(heads, int):
        return args  # a Swin's first stage has 3 heads; its tiny sizes are what the sweep takes
    if config.get('attn_pool_num_heads') == heads:  # NaFlexViT's MAP pool: timm gives it num_heads, the hub
        return args  # config the zoo's number (no model_arg names it)
    k = 1
    while width // k > SMALL and (heads // k) % 2 == 0 and (width // k) % 2 == 0:
        k *= 2
    if k > 1:
        args.update(embed_dim=width // k, num_heads=heads // k)
        for f in ('intermediate_size', 'out_features'):  # Gemma 4's MLP; a projector
            if config.get(f):
                args[f] = config[f] // k
    if config.get('position_embedding_size'):  # Gemma 4's table: 10240 rows of which the grid reads 48
        img, p = config['img_size'], config['patch_size']
        args['position_embedding_size'] = max((img, img) if isinstance(img, int) else img) // p
    return args


def _digests(flat: dict) -> dict:
    return {k: hashlib.sha256(np.ascontiguousarray(v, np.float32)).hexdigest() for k, v in flat.items()}


_WORKER = '''
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
for line in sys.stdin:
    name, x_file, out_file = json.loads(line)
    # timm has a few tags only as a URL to a pickle: their architectures load from a repo named directly
    name_or_repo = name if hub.zoo()['tags'][name].get('hf_hub_id') else f'hf-hub:timm/{name}'
    model, variables = (vitjax.create_model(name, pretrained=True) if name == name_or_repo
                        else vitjax.load(name_or_repo))
    np.save(out_file, np.asarray(jax.jit(model.apply)(variables, np.load(x_file))))
    digests = _digests(jax.tree.map(np.asarray, flatten(variables['params'])))
    print('RESULT', json.dumps([hub.read_hub_config(name_or_repo)['model'], digests]), flush=True)
    del model, variables
    jax.clear_caches()
'''


class Sweep:
    """`names` published into `cache` one at a time, as a test asks for one (`sweep[name]`), and loaded by one
    torch-free worker process, their repo deleted after (a part's repos together are GBs: a CI disk can be
    small); `sweep[name]`: (logits, ref, hub_cfg, convert_cfg, hub param digests, convert param digests, the timm
    keys that export's table does not give back bit for bit). A worker that died is replaced for the next name."""

    def __init__(self, cache, names: list[str], full_size: bool = False, sizes=reduced):
        self.cache, self.full_size, self.sizes = str(cache), full_size, sizes
        self.seeds = {name: i for i, name in enumerate(names)}  # a name's inputs, whichever tests run
        self.x_file, self.out_file, self.log = (os.path.join(self.cache, f) for f in ('x.npy', 'out.npy', 'worker.log'))
        self.worker, self.done = None, {}

    def _start(self):
        with open(self.log, 'w') as err:
            self.worker = subprocess.Popen([sys.executable, '-c', _WORKER], cwd=ROOT, stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=err, text=True,
                                           env=hubcache.offline_env(self.cache))

    def close(self):
        if self.worker is not None:
            self.worker.stdin.close()
            self.worker.kill()
            self.worker.wait()
            self.worker = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getitem__(self, name: str) -> tuple:
        if name not in self.done:
            self.done[name] = self._run(name)
        return self.done[name]

    def _run(self, name: str) -> tuple:
        import select
        import shutil

        import torch

        from porting.sources import source_of
        from vitjax.io import flatten
        if self.worker is None or self.worker.poll() is not None:
            self.close()
            self._start()
        i, worker, arch = self.seeds[name], self.worker, _zoo()['architectures'][name.split('.')[0]]
        paths = hubcache.add(self.cache, name, seed=i,
                             **({} if self.full_size else self.sizes(arch['family'], arch['config'])))
        try:
            m = paths.pop('model')
            _, h, w = m.pretrained_cfg['input_size']
            x = np.random.default_rng(i).standard_normal((1, h, w, 3)).astype(np.float32)
            np.save(self.x_file, x)
            worker.stdin.write(json.dumps([name, self.x_file, self.out_file]) + '\n')
            worker.stdin.flush()
            with torch.no_grad():  # timm runs while the worker loads
                ref = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
            src = source_of(m, 'timm')
            config = json.loads(json.dumps(src.torch_config(m)))
            state = src.state_of(m)
            params = src.from_state(state, config)
            convert_digests = _digests(flatten(params))
            back = src.to_state(params, config, state.keys())  # export's table: back to timm, bit for bit
            not_exact = sorted(set(state) ^ set(back)) + [k for k in state if k in back and not (
                np.asarray(back[k]).dtype == state[k].numpy().dtype and np.array_equal(back[k], state[k].numpy()))]
            del m, state, params, back
            while True:
                ready, _, _ = select.select([worker.stdout], [], [], 900)
                line = worker.stdout.readline() if ready else ''
                if not line or line.startswith('RESULT '):
                    break
            if not line:
                self.close()  # dead or hung: the next name gets a new worker
                raise AssertionError(f'{name}: the torch-free worker died or hung:\n' + open(self.log).read()[-4000:])
            hub_cfg, hub_digests = json.loads(line[len('RESULT '):])
            return np.load(self.out_file), ref, hub_cfg, config, hub_digests, convert_digests, not_exact
        finally:
            shutil.rmtree(paths['config.json'].rsplit(os.sep + 'snapshots' + os.sep, 1)[0])


def run(cache, names: list[str], full_size: bool = False, sizes=reduced) -> dict:
    """Every one of `names` through a `Sweep`: {name: its result}."""
    with Sweep(cache, names, full_size, sizes) as sweep:
        return {name: sweep[name] for name in names}


def check(results: dict, name: str) -> None:
    logits, ref, hub_cfg, convert_cfg, hub_params, convert_params, not_exact = results[name]
    assert not_exact == [], f'{name}: export does not give back these tensors bit for bit: {not_exact[:8]}'
    assert hub_cfg == convert_cfg, {k: (hub_cfg.get(k), convert_cfg.get(k)) for k in set(hub_cfg) | set(convert_cfg)
                                    if hub_cfg.get(k) != convert_cfg.get(k)}
    tol = 1e-4 * max(1.0, float(np.abs(ref).max()))
    assert logits.shape == ref.shape
    diff = float(np.abs(logits - ref).max())
    assert diff <= tol, f'{name}: max |dlogit| {diff:.3g} > {tol:.3g}'
    assert hub_params.keys() == convert_params.keys()
    assert [k for k in hub_params if hub_params[k] != convert_params[k]] == []


def tests(names: list[str], full_size: bool = False, zoo: bool = True, sizes=reduced):
    """(the module fixture, the test) over `names`, for a test file to assign: one worker subprocess per file,
    one file per xdist worker (--dist loadfile), each name built when its test runs (`-k` builds only those);
    `zoo`: marked for `make test-zoo` only; `sizes`: `reduced` or `small`."""
    import pytest

    @pytest.fixture(scope='module')
    def results(tmp_path_factory):
        import shutil
        cache = tmp_path_factory.mktemp('hf')
        with Sweep(cache, names, full_size, sizes) as sweep:
            yield sweep
        shutil.rmtree(cache, ignore_errors=True)

    mark = pytest.mark.zoo if zoo else pytest.mark.slow

    @mark
    @pytest.mark.slow
    @pytest.mark.parametrize('name', names)
    def test_loads_torch_free_with_timm_logits_and_convert_params(results, name):
        check(results, name)
    return results, test_loads_torch_free_with_timm_logits_and_convert_params
