"""BENCHMARKS.md from one results file: every row, and each target of the performance issue checked."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional


def _fmt(v: Any) -> str:
    if v is None:
        return ''
    if isinstance(v, float):
        return f'{v:.3g}' if abs(v) < 1000 else f'{v:.0f}'
    return str(v)


def _find(records, name, model_part, baseline='timm_eager') -> Optional[dict]:
    return next((r for r in records if r['name'] == name and model_part in r['model']
                 and r.get('baseline') == baseline and not r.get('model_kwargs')), None)


def targets(result: dict) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for the issue's targets that this run measured."""
    rows, recs = [], result['records']
    ts, inf = _find(recs, 'train_step', 'vit_small'), _find(recs, 'inference', 'vit_small')
    if ts:
        ok = ts['ratio'] >= 1.2
        rows.append(('CPU training step >= 1.2x timm eager (ViT-S/16)', f"{ts['ratio']:.2f}x at batch {ts['batch']}",
                     'met' if ok else f"not met: {1.2 / ts['ratio']:.2f}x short"))
        if ts.get('mfu') is not None:
            best = result.get('peak_gflops_best')
            of_best = f"; {ts['achieved_gflops'] / best:.0%} of the best GEMM, {best:.1f}" if best else ''
            rows.append(('training >= 60% of the measured GEMM peak', f"{ts['mfu']:.0%} ({ts['achieved_gflops']} of "
                         f"{ts['peak_gflops']:.1f} GFLOP/s{of_best})", 'met' if ts['mfu'] >= 0.6 else 'not met'))
    if inf:
        rows.append(('CPU inference >= 1.3x timm eager (ViT-S/16)', f"{inf['ratio']:.2f}x at batch {inf['batch']}",
                     'met' if inf['ratio'] >= 1.3 else f"not met: {1.3 / inf['ratio']:.2f}x short"))
    conv = next((r for r in recs if r['name'] == 'convert_verify' and 'vit_base' in r['model']), None)
    if conv:
        ok = conv['wall_s'] <= 5 and conv['rss_over_weights'] <= 2.5
        rows.append(('convert + verify ViT-B/16 <= 5 s, peak RSS <= 2.5x weights',
                     f"{conv['wall_s']} s, {conv['rss_over_weights']}x ({conv['peak_rss_mb']} MB for "
                     f"{conv['weights_mb']} MB)", 'met' if ok else 'not met'))
    hub = next((r for r in recs if r['name'] == 'hub_load'), None)
    if hub:
        ok = hub['wall_s'] <= hub['baseline_wall_s'] and hub['rss_over_weights'] <= 2
        rows.append(('ViT-B/16 from the hub cache, fresh process: wall <= timm pretrained=True, peak RSS <= 2x weights',
                     f"{hub['wall_s']} s vs timm {hub['baseline_wall_s']} s; {hub['rss_over_weights']}x "
                     f"({hub['peak_rss_mb']} MB for {hub['weights_mb']} MB; timm {hub['baseline_peak_rss_mb']} MB)",
                     'met' if ok else 'not met'))
    mock = next((r for r in recs if r['name'] == 'input_mock_224'), None)
    if mock and mock.get('baseline_img_s'):
        ratio = mock['vitjax_img_s'] / mock['baseline_img_s']
        rows.append(('input pipeline >= 3x the training step img/s (224², vs ViT-S step)', f'{ratio:.1f}x',
                     'met' if ratio >= 3 else 'not met'))
    for pipe in ('train', 'eval'):
        got = [r for r in recs if r['name'] == f'input_scale_{pipe}' and r.get('ratio')]
        if got:
            worst = min(got, key=lambda r: r['ratio'])
            rows.append((f'{pipe} input on uncached JPEGs >= 1.5x timm\'s loader, per core (tfds and folder)',
                         f"{worst['ratio']:.2f}x at worst ({worst['model']}, {worst['threads']} thread(s)); "
                         f"{worst['bytes_per_image']:,} bytes/image", 'met' if worst['ratio'] >= 1.5 else 'not met'))
    resume = [r for r in recs if r['name'] == 'input_resume']
    if resume:
        slow = max(r['first_batch_s'] for r in resume)
        ok = slow <= 30 and all(r['equal'] for r in resume)
        rows.append(('resume at step 100,000 (batch 128): first batch <= 30 s, the same batches',
                     f'{slow} s at worst', 'met' if ok else 'not met'))
    scan = next((r for r in recs if r['name'] == 'input_scan'), None)
    if scan:
        rows.append(('folder scan <= 1 ms/file', f"{scan['ms_per_file']} ms", 'met' if scan['ms_per_file'] <= 1
                     else 'not met'))
    accel = next((r for r in recs if r['name'] == 'train_step_bf16' and r.get('mfu') is not None), None)
    if accel:
        vs = f", {accel['ratio']:.2f}x {accel['baseline']}" if accel.get('ratio') else ''
        rows.append(('accelerator ViT-B/16 bf16 training >= 50% MFU', f"{accel['mfu']:.0%} on {accel['device']} "
                     f"({accel['vitjax_img_s']} img/s at batch {accel['batch']}{vs})",
                     'met' if accel['mfu'] >= 0.5 else 'not met'))
    else:
        rows.append(('accelerator ViT-B/16 bf16 training >= 50% MFU', result.get('gpu', ''),
                     'not measured (no GPU or TPU here)' if 'none' in str(result.get('gpu')) else 'not measured'))
    return rows


def write_markdown(result: dict, path: Path) -> None:
    recs = result['records']
    cols = ['name', 'model', 'batch', 'vitjax_img_s', 'baseline', 'baseline_img_s', 'ratio', 'flops_per_img',
            'achieved_gflops', 'mfu', 'compile_s', 'baseline_compile_s']
    lines = ['# Benchmarks', '',
             f"Generated by `make bench` ({result['mode']}) on `{result['host']}` at {result['date']}: "
             f"{result['platform']}, Python {result['python']}, jax {result['jax']}, torch {result['torch']}. "
             f"Measured f32 GEMM peak (XLA, 2048² matmul, median of 15): {result['peak_gflops']} GFLOP/s "
             f"(best of the 15: {result.get('peak_gflops_best', '-')}). GPU: {result['gpu']}. Host malloc "
             f"for both sides (train.py's, `vitjax/train/hostmem.py`): "
             f"`{result.get('host_malloc', 'glibc defaults')}`; "
             "conversion runs with glibc's defaults.", '',
             'Timings are medians after warm-up; each contender runs in its own process and they take turns '
             '(A/B/A/B), so machine noise hits both alike; only ratios from the same run are meaningful on these '
             'shared machines. '
             '`flops_per_img` is XLA\'s cost analysis of the jitted forward (inference) or forward + backward + '
             'update (train step); `mfu` = achieved / measured GEMM peak (`train_step_bf16`: / the device\'s dense bf16 '
             'spec peak, `benchmarks/accel.py`). `compile_s`: vitjax\'s first call (XLA '
             'compilation); `baseline_compile_s`: torch.compile\'s first call.', '',
             '| ' + ' | '.join(cols) + ' |', '|' + '---|' * len(cols)]
    for r in recs:
        if r['name'] in ('inference', 'train_step', 'train_step_bf16', 'scan_blocks') or r['name'].startswith('pmap'):
            lines.append('| ' + ' | '.join(_fmt(r.get(c)) for c in cols) + ' |')
    lines += ['', '## Input pipeline', '', '| dataset | image size | batch | img/s | train step img/s (ViT-S) |',
              '|---|---|---|---|---|']
    for r in recs:
        if r['name'] in ('input_digits', 'input_mock_224'):
            lines.append(f"| {r['name'][6:]} | {r['image_size']} | {r['batch']} | {_fmt(r['vitjax_img_s'])} | "
                         f"{_fmt(r.get('baseline_img_s'))} |")
    lines += ['', '## Conversion (convert + parity check, fresh process)', '',
              '| model | wall s | peak RSS MB | weights MB | RSS / weights | parity |', '|---|---|---|---|---|---|']
    for r in recs:
        if r['name'] == 'convert_verify':
            lines.append(f"| {r['model']} | {r['wall_s']} | {r['peak_rss_mb']} | {r['weights_mb']} | "
                         f"{r['rss_over_weights']} | {'passed' if r['passed'] else 'FAILED'} |")
    hub = [r for r in recs if r['name'] == 'hub_load']
    if hub:
        lines += ['', '## Pretrained from the hub cache (fresh process, imports included, torch-free vs timm)', '',
                  *([f"Measured in a separate `--sections hub` run at {hub[0]['measured']}.", '']
                    if hub[0].get('measured') else []),
                  '| model | vitjax wall s | timm pretrained=True wall s | ratio | vitjax peak RSS MB | timm MB | '
                  'weights MB | RSS / weights |', '|---|---|---|---|---|---|---|---|']
        lines += [f"| {r['model']} | {r['wall_s']} | {r['baseline_wall_s']} | {r['wall_ratio']} | {r['peak_rss_mb']} | "
                  f"{r['baseline_peak_rss_mb']} | {r['weights_mb']} | {r['rss_over_weights']} |" for r in hub]
    fsdp_dates = {r['measured'] for r in recs if r['name'] == 'fsdp' and r.get('measured')}
    lines += ['', '## Parallelism: fsdp vs pmap (train step, simulated devices)', '',
              *([f"Measured in a separate `--sections fsdp` run at {', '.join(sorted(fsdp_dates))}.", '']
                if fsdp_dates else []),
              '| model | devices | batch | state MB / device fsdp | pmap | img/s fsdp | pmap | compile s fsdp | pmap |',
              '|---|---|---|---|---|---|---|---|---|']
    for r in recs:
        if r['name'] == 'fsdp':
            lines.append(f"| {r['model']} | {r['device']} | {r['batch']} | {r['state_mb_per_device']} | "
                         f"{r['baseline_state_mb_per_device']} | {_fmt(r['vitjax_img_s']) or r.get('note', '')} | "
                         f"{_fmt(r['baseline_img_s']) or r.get('baseline_note', '')} | {_fmt(r['compile_s'])} | "
                         f"{_fmt(r['baseline_compile_s'])} |")
    scale = [r for r in recs if r['name'] in ('input_scale_train', 'input_scale_eval')]
    if scale:
        dates = {r['measured'] for r in scale if r.get('measured')}
        lines += ['', '## Input at scale: uncached real-size JPEGs, vitjax vs timm\'s loader', '',
                  *([f"Measured in a separate `--sections input_scale` run at {', '.join(sorted(dates))}.", '']
                    if dates else []),
                  '5,000 photo-like JPEGs (~500×375, quality 90; `benchmarks/input_scale.py`) read as a tfds dataset '
                  'and as an image folder, 224², batch 128, nothing cached; timm: `ImageDataset` + its train / eval '
                  'transform (`use_prefetcher=True`: uint8 out, normalised on the device, as ours) + `fast_collate` '
                  'in a DataLoader with the same number of workers as tf.data threads.', '',
                  '| pipeline | source | threads | vitjax img/s (uint8) | timm img/s (uint8) | ratio | timm img/s '
                  '(ToTensor + Normalize, float32) | ratio | bytes/image to device: vitjax / timm float32 |',
                  '|---|---|---|---|---|---|---|---|---|']
        for r in scale:
            lines.append(f"| {r['name'][12:]} | {r['model']} | {r['threads']} | {_fmt(r['vitjax_img_s'])} | "
                         f"{_fmt(r['baseline_img_s'])} | {_fmt(r.get('ratio'))} | {_fmt(r.get('timm_float_img_s'))} | "
                         f"{_fmt(r['vitjax_img_s'] / r['timm_float_img_s']) if r.get('timm_float_img_s') else ''} | "
                         f"{r['bytes_per_image']:,} / {r.get('timm_float_bytes_per_image') or 0:,} |")
        resume = [r for r in recs if r['name'] == 'input_resume']
        if resume:
            lines += ['', '| resume at step (batch 128) | source | first batch after | first 3 batches equal the '
                      'resumed-earlier run\'s |', '|---|---|---|---|']
            lines += [f"| {r['start_step']:,} | {r['model']} | {r['first_batch_s']} s | {r['equal']} |" for r in resume]
        for r in recs:
            if r['name'] == 'input_scan':
                lines += ['', f"Folder scan (header + trailer of each file): {r['ms_per_file']} ms/file over "
                          f"{r['files']:,} files ({r['pil_files']} routed to PIL)."]
    lines += ['', '## Targets', '', '| target | measured | verdict |', '|---|---|---|']
    lines += [f'| {t} | {m} | {v} |' for t, m, v in targets(result)]
    lines += ['', 'Raw records: `benchmarks/results/`.', '']
    notes = Path(__file__).with_name('notes.md')  # hand-written analysis of the gaps, kept across runs
    if notes.exists():
        lines += [notes.read_text()]
    path.write_text('\n'.join(lines))


def merge(result: dict, later: dict) -> dict:
    """`result` with the sections a later run (`--sections ...`) measured replaced by that run's records, each
    marked with when it was measured."""
    names = {r['name'] for r in later['records']}
    return {**result, 'records': [r for r in result['records'] if r['name'] not in names]
            + [{**r, 'measured': later['date']} for r in later['records']]}


if __name__ == '__main__':
    # python -m benchmarks.report RESULT.json [LATER_SECTIONS.json ...]: rewrites BENCHMARKS.md
    result = json.loads(Path(sys.argv[1]).read_text())
    for later in sys.argv[2:]:
        result = merge(result, json.loads(Path(later).read_text()))
    out = Path('BENCHMARKS.md')
    write_markdown(result, out)
    print(f'wrote {out}')
