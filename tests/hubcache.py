"""A Hugging Face hub cache on disk holding timm repos as timm publishes them: the torch-free loader's tests and
benchmark, and a way to try `pretrained=True` offline.

`add(cache, 'vit_base_patch16_224.augreg2_in21k_ft_in1k', depth=1)` builds the timm model with random,
perturbed weights, writes it with timm's own `save_for_hf` (config.json + model.safetensors, what timm pushes
to `timm/<arch>.<tag>`), and lays the files out as huggingface_hub's cache does: blobs named by their hash
(sha256 for LFS files, git's blob sha1 for small ones), `snapshots/<commit>/` links and `refs/main`. With
`HF_HUB_CACHE` pointing there and `HF_HUB_OFFLINE=1`, `hf_hub_download` serves them through its real code.
"""
import hashlib
import json
import os
import shutil
import tempfile


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


def add(cache, name: str, seed: int = 0, revision: str = None, files=('config.json', 'model.safetensors'),
        dtype=None, **model_args) -> dict:
    """timm `name` (`arch.tag`) as the repo `timm/<name>` in `cache`; returns {file: path in the snapshot} and
    the torch model under 'model'."""
    import torch
    from timm.models import save_for_hf

    from porting.random_init import create
    model = create(name, seed=seed, **model_args)
    out = {'model': model}
    with tempfile.TemporaryDirectory() as tmp:
        if dtype is not None:
            model = create(name, seed=seed, **model_args).to(dtype)
        save_for_hf(model, tmp, safe_serialization='both' if 'pytorch_model.bin' in files else True,
                    model_args=model_args or None)
        import timm
        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id or f'timm/{name}'  # some tags share a repo
        repo = os.path.join(str(cache), 'models--' + hub_id.replace('/', '--'))
        commit = revision or hashlib.sha1(f'{name}-{seed}'.encode()).hexdigest()
        snap = os.path.join(repo, 'snapshots', commit)
        os.makedirs(os.path.join(repo, 'blobs'), exist_ok=True)
        os.makedirs(snap, exist_ok=True)
        for f in files:
            data = open(os.path.join(tmp, f), 'rb').read()
            blob = hashlib.sha256(data).hexdigest() if f.endswith(('.safetensors', '.bin')) else _git_sha1(data)
            with open(os.path.join(repo, 'blobs', blob), 'wb') as fh:
                fh.write(data)
            link = os.path.join(snap, f)
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(os.path.join('..', '..', 'blobs', blob), link)
            out[f] = link
        os.makedirs(os.path.join(repo, 'refs'), exist_ok=True)
        if revision is None:
            with open(os.path.join(repo, 'refs', 'main'), 'w') as fh:
                fh.write(commit)
    out['commit'] = commit
    del torch
    return out


def remove(cache, name: str) -> None:
    shutil.rmtree(os.path.join(str(cache), 'models--timm--' + name), ignore_errors=True)


def offline_env(cache) -> dict:
    return dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE='1', HF_HUB_DISABLE_TELEMETRY='1')


def config(paths) -> dict:
    return json.loads(open(paths['config.json']).read())
