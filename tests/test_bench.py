"""The benchmark harness runs (one-block ViT-Ti, one repeat) and writes records with every field; no timing is
asserted here (speed is measured in `make bench`, never in tests)."""
import json

import pytest

from benchmarks import bench, harness
from benchmarks.report import write_markdown

# Nothing the harness checks depends on the depth, only its cost: one block compiles and runs far sooner than twelve.
ONE_BLOCK = {'depth': 1}


def vit_ti_matmul_flops(depth, img_size=224, train=False):
    """2 x the multiply-adds of ViT-Ti/16's matmuls per image: patch embedding, per block qkv + proj + 4x MLP
    (12 d^2 per token) and attention's QK^T and AV (2 t^2 d), the 1000-class head. Training adds the backward,
    twice the forward but for the image's own gradient at the patch embedding."""
    d, patches = 192, (img_size // 16) ** 2
    tokens = patches + 1
    embed = patches * 3 * 16 * 16 * d
    fwd = embed + depth * (12 * tokens * d * d + 2 * tokens * tokens * d) + d * 1000
    return 2 * (3 * fwd - embed if train else fwd)


def assert_flops_of_vit_ti(flops, depth, train):
    # XLA's count has the matmuls and more: norms, GELU, softmax, the optimizer's update.
    assert 1 <= flops / vit_ti_matmul_flops(depth, train=train) < 1.1


@pytest.mark.slow
def test_harness_writes_records_and_markdown(tmp_path, monkeypatch):
    # The roofline's size is no part of what is checked here: a small matmul still gives a measured peak.
    monkeypatch.setattr(bench, 'gemm_peak', lambda: harness.gemm_peak(256, 3))
    assert bench.main(['--models', 'vit_tiny_patch16_224', '--batch', '2', '--repeats', '1', '--sections', 'models',
                       '--model-kwargs', json.dumps(ONE_BLOCK), '--out-dir', str(tmp_path),
                       '--markdown', str(tmp_path / 'BENCHMARKS.md')]) == 0
    (path,) = tmp_path.glob('*.json')
    result = json.loads(path.read_text())
    assert {'host', 'date', 'peak_gflops', 'gpu', 'records'} <= set(result) and result['peak_gflops'] > 0
    names = [(r['name'], r['baseline']) for r in result['records']]
    assert names == [('inference', 'timm_eager'), ('train_step', 'timm_eager')]
    for r in result['records']:
        assert set(bench.FIELDS) <= set(r) and r['model_kwargs'] == ONE_BLOCK
        assert r['vitjax_img_s'] > 0 and r['baseline_img_s'] > 0 and r['mfu'] > 0
        assert_flops_of_vit_ti(r['flops_per_img'], 1, train=r['name'] == 'train_step')
        assert r['ratio'] == pytest.approx(r['vitjax_img_s'] / r['baseline_img_s'], rel=1e-2)
    md = (tmp_path / 'BENCHMARKS.md').read_text()
    assert '| inference | vit_tiny_patch16_224 depth=1 | 2 |' in md and '## Targets' in md


def test_report_checks_targets(tmp_path):
    rec = dict(name='train_step', model='vit_small_patch16_224', batch=32, baseline='timm_eager', ratio=1.1,
               mfu=0.5, achieved_gflops=35.0, peak_gflops=70.0, vitjax_img_s=1.0, baseline_img_s=0.9)
    result = {'mode': 'quick', 'host': 'h', 'date': 'd', 'platform': 'p', 'python': '3', 'jax': 'j', 'torch': 't',
              'peak_gflops': 70.0, 'gpu': 'none: no GPU', 'records': [rec]}
    write_markdown(result, tmp_path / 'B.md')
    md = (tmp_path / 'B.md').read_text()
    assert 'CPU training step >= 1.2x timm eager (ViT-S/16) | 1.10x at batch 32 | not met: 1.09x short' in md
    assert 'training >= 60% of the measured GEMM peak | 50% (35.0 of 70.0 GFLOP/s) | not met' in md


@pytest.mark.slow
def test_fsdp_row_measures_both_modes(tmp_path):
    from benchmarks import system
    (r,) = system.bench_fsdp('vit_tiny_patch16_224', 2, 1, devices=2, fsdp_min_bytes=2**16,
                             model_kwargs={**ONE_BLOCK, 'img_size': 64})
    assert r['vitjax_img_s'] > 0 and r['baseline_img_s'] > 0 and not r['note'] and not r['baseline_note']
    # One ViT-Ti block's, the embedding's and the head's params and both moments, halved by fsdp (tensors under
    # 64 KiB stay whole).
    assert 0.45 * r['baseline_state_mb_per_device'] < r['state_mb_per_device'] < 0.6 * r['baseline_state_mb_per_device']


def test_a_step_that_does_not_fit_is_stopped_and_reported():
    from benchmarks import system
    r = system.step_timer('vit_tiny_patch16_224', 2, 1, devices=1, memory_limit=50 * 2**20)
    assert r['oom_rss_bytes'] > 50 * 2**20 and 'step_s' not in r


def test_input_scale_photos_are_distinct_real_size_jpegs(tmp_path):
    """The input-at-scale data: photo-like JPEGs of ~500x375 in ten classes, all different, all on the fast
    (TensorFlow) decode path, readable through the folder pipeline."""
    from PIL import Image

    from benchmarks.input_scale import build_folder
    from vitjax import images
    folder = build_folder(tmp_path, n=20)
    files = sorted(folder.glob('*/*.jpg'))
    assert len(files) == 20 and len({f.parent.name for f in files}) == 10
    assert len({f.read_bytes() for f in files}) == 20
    for f in files:
        with Image.open(f) as im:
            assert im.format == 'JPEG' and 330 <= min(im.size) <= 420 and 450 <= max(im.size) <= 550
        assert not images.probe(str(f)).pil


def _accel_row(name, batch, compile_torch, model_kwargs=None):
    from benchmarks.accel import bench_accel
    (r,) = bench_accel(name, batch, 1, compile_torch=compile_torch, model_kwargs=model_kwargs)
    assert r['name'] == 'train_step_bf16' and r['dtype'] == 'bfloat16' and r['devices'] == 1
    assert r['vitjax_img_s'] > 0 and r['baseline_img_s'] > 0
    return r


@pytest.mark.slow
def test_accelerator_row_runs_both_bf16_steps():
    """The GPU row's code on this CPU (ViT-Ti with one block, timm eager): both sides train in bf16, no MFU without
    a spec peak."""
    r = _accel_row('vit_tiny_patch16_224', 2, compile_torch=False, model_kwargs=ONE_BLOCK)
    assert r['baseline'] == 'timm_eager_amp' and r['mfu'] is None and r['attention'] == 'xla'
    assert r['model'] == 'vit_tiny_patch16_224 depth=1'
    assert_flops_of_vit_ti(r['flops_per_img'], 1, train=True)


@pytest.mark.gpu
def test_gpu_row_vit_b16_bf16_against_timm_compile():
    """`make bench`'s GPU row as it runs there: ViT-B/16, cuDNN attention, MFU against the spec peak."""
    from benchmarks.accel import peak_bf16_tflops
    r = _accel_row('vit_base_patch16_224', 64, compile_torch=True)
    assert r['baseline'] == 'timm_compile_amp' and r['attention'] == 'cudnn' and r['flops_per_img'] > 1e9
    assert peak_bf16_tflops(r['device']) is None or 0 < r['mfu'] < 1
    print(r)
