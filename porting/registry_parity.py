"""Convert every registry model at full size through the public CLI and tabulate the parity it reports.

    python -m porting.registry_parity --doc docs/models.md   # rewrites the table between the markers
    python -m porting.registry_parity --pattern 'eva02_*' 'vit_*rope*' --doc docs/models.md   # only those rows

`make parity-table` runs the first. `--readme` is the old name of `--doc`, kept as an alias.

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
    proc = subprocess.run([sys.executable, '-m', 'porting.random_init', '--model', name, '--out', str(ckpt)],
                          capture_output=True, text=True)
    if proc.returncode:  # a row of its own, like a failed conversion: the other models still run
        return {'model': name, 'passed': False, 'error': proc.stderr.strip().splitlines()[-1:]}
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


def ours(path: Path) -> bool:
    """A --json file this tool wrote: a list of parity reports."""
    try:
        reports = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(reports, list) and all(isinstance(r, dict) and {'model', 'passed'} <= set(r) for r in reports)


def read_doc(doc: Path) -> str:
    """Its text, if it is a file we can rewrite in place and it has the table markers; else ValueError."""
    from vitjax.io import check_output_file
    check_output_file(doc, lambda p: True)  # the user named it to rewrite; not a link or a directory
    if not doc.is_file():
        raise ValueError(f'{doc} does not exist')
    body = doc.read_text()
    if START not in body or END not in body:
        raise ValueError(f'{doc} has no {START} ... {END} markers')
    return body


def main(argv=None) -> int:
    import vitjax
    from vitjax.io import check_output_file, write_file
    ap = argparse.ArgumentParser(prog='python -m porting.registry_parity', description=__doc__.split('\n')[0])
    ap.add_argument('--pattern', nargs='+', default=['*'], help='registry names to run (shell patterns)')
    ap.add_argument('--doc', '--readme', dest='doc', metavar='FILE',
                    help='rewrite the table between the parity-table markers of this Markdown file '
                         '(docs/models.md; --readme is the old name)')
    ap.add_argument('--json', help='also write all reports to this file (a new file, or one this tool wrote)')
    args = ap.parse_args(argv)
    empty = [p for p in args.pattern if not vitjax.list_models(p)]
    if empty:  # no runs would pass vacuously
        ap.error(f'argument --pattern: {" ".join(empty)} matches no registry model')
    doc = Path(args.doc) if args.doc else None
    try:  # the runs take minutes: what would refuse the writes at the end is refused before them
        if args.json:
            check_output_file(args.json, ours)
        if doc:
            read_doc(doc)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        names = list(dict.fromkeys(n for p in args.pattern for n in vitjax.list_models(p)))
        for name in names:
            reports.append(run(name, Path(tmp)))
            r = reports[-1]
            print(f"{name:40s} {'ok ' if r['passed'] else 'FAIL'} {r.get('max_abs_diff', r.get('error'))}",
                  flush=True)
    print(table(reports))
    try:  # through temporary files renamed into place: a kill never leaves either half-written
        if args.json:
            write_file(args.json, lambda tmp: Path(tmp).write_text(json.dumps(reports, indent=2) + '\n'), ours)
        if doc:
            body = read_doc(doc)  # again: it may have been edited during the runs
            # by position, not str.replace: the old table's text (a lone newline, say) occurs elsewhere too
            start, end = body.index(START) + len(START), body.index(END)
            body = f'{body[:start]}\n{merge(body[start:end], reports, vitjax.list_models())}\n{body[end:]}'
            write_file(doc, lambda tmp: Path(tmp).write_text(body), lambda p: True)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    return 0 if all(r['passed'] for r in reports) else 1


if __name__ == '__main__':
    sys.exit(main())
