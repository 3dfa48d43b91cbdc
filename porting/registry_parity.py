"""Convert every registry model at full size through the public CLI and tabulate the parity it reports.

    python -m porting.registry_parity --readme README.md   # rewrites the table between the markers
    python -m porting.registry_parity --pattern 'eva02_*' 'vit_*rope*' --readme README.md   # only those rows

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


HEADER = ['| model | max abs logit diff | max abs logit | pre-logits max diff | passed |', '|---|---|---|---|---|']


def row(r: dict) -> str:
    if 'max_abs_diff' not in r:
        return f"| `{r['model']}` | error: {r.get('error')} | | | no |"
    return (f"| `{r['model']}` | {r['max_abs_diff']:.1e} | {r['max_abs_logit']:.3g} | "
            f"{r['pre_logits']['max_abs_diff']:.1e} | {'yes' if r['passed'] else 'NO'} |")


def merge(old_table: str, reports: list[dict], order: list[str]) -> str:
    """The table with the rows of these reports replaced or added, in registry order; other rows kept."""
    rows = {m[1]: line for line in old_table.splitlines() if (m := re.match(r'\| `([^`]+)` \|', line))}
    rows.update({r['model']: row(r) for r in reports})
    names = [n for n in order if n in rows] + sorted(n for n in rows if n not in order)
    return '\n'.join(HEADER + [rows[n] for n in names])


def table(reports: list[dict]) -> str:
    return '\n'.join(HEADER + [row(r) for r in reports])


def main(argv=None) -> int:
    import vitjax
    ap = argparse.ArgumentParser(prog='python -m porting.registry_parity', description=__doc__.split('\n')[0])
    ap.add_argument('--pattern', nargs='+', default=['*'], help='registry names to run (shell patterns)')
    ap.add_argument('--readme', help='rewrite the table between the parity-table markers of this file')
    ap.add_argument('--json', help='also write all reports to this file')
    args = ap.parse_args(argv)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        names = list(dict.fromkeys(n for p in args.pattern for n in vitjax.list_models(p)))
        for name in names:
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
        old = body[body.index(START) + len(START):body.index(END)]
        text = merge(old, reports, vitjax.list_models())
        body = body.replace(old, f'\n{text}\n')
        readme.write_text(body)
    return 0 if all(r['passed'] for r in reports) else 1


if __name__ == '__main__':
    sys.exit(main())
