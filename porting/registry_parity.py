"""Convert every registry model at full size through the public CLI and tabulate the parity it reports.

    python -m porting.registry_parity --readme README.md   # rewrites the table between the markers

Weights are timm random-init (perturbed) safetensors files: no network needed. Exits non-zero if any fails.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

START, END = '<!-- parity-table:start -->', '<!-- parity-table:end -->'


def run(name: str, work: Path) -> dict:
    ckpt = work / f'{name}.safetensors'
    out = work / name
    t0 = time.time()
    subprocess.run([sys.executable, '-m', 'porting.random_init', '--model', name, '--out', str(ckpt)],
                   check=True, capture_output=True)
    proc = subprocess.run([sys.executable, '-m', 'porting.convert', '--model', name, '--checkpoint', str(ckpt),
                           '--out', str(out)], capture_output=True, text=True)
    ckpt.unlink()
    if proc.returncode:
        return {'model': name, 'passed': False, 'error': proc.stderr.strip().splitlines()[-1:]}
    report = json.loads((out / 'parity.json').read_text())
    report['wall_s'] = round(time.time() - t0, 1)
    return report


def table(reports: list[dict]) -> str:
    rows = ['| model | max abs logit diff | max abs logit | pre-logits max diff | passed |',
            '|---|---|---|---|---|']
    for r in reports:
        if 'max_abs_diff' not in r:
            rows.append(f"| `{r['model']}` | error: {r.get('error')} | | | no |")
            continue
        rows.append(f"| `{r['model']}` | {r['max_abs_diff']:.1e} | {r['max_abs_logit']:.3g} | "
                    f"{r['pre_logits']['max_abs_diff']:.1e} | {'yes' if r['passed'] else 'NO'} |")
    return '\n'.join(rows)


def main(argv=None) -> int:
    import vitjax
    ap = argparse.ArgumentParser(prog='python -m porting.registry_parity', description=__doc__.split('\n')[0])
    ap.add_argument('--pattern', default='*')
    ap.add_argument('--readme', help='rewrite the table between the parity-table markers of this file')
    ap.add_argument('--json', help='also write all reports to this file')
    args = ap.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in vitjax.list_models(args.pattern):
            reports.append(run(name, Path(tmp)))
            r = reports[-1]
            print(f"{name:40s} {'ok ' if r['passed'] else 'FAIL'} {r.get('max_abs_diff', r.get('error'))}",
                  flush=True)
    text = table(reports)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2) + '\n')
    if args.readme:
        readme = Path(args.readme)
        body = readme.read_text()
        if START not in body or END not in body:
            print(f'error: {readme} has no {START} ... {END} markers', file=sys.stderr)
            return 1
        body = re.sub(re.escape(START) + '.*?' + re.escape(END), f'{START}\n{text}\n{END}', body, flags=re.S)
        readme.write_text(body)
    return 0 if all(r['passed'] for r in reports) else 1


if __name__ == '__main__':
    sys.exit(main())
