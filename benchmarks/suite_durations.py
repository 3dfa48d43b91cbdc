"""Where `make test`'s time goes: a pytest JUnit XML (`--junitxml=FILE`) -> test time grouped by kind.

    .venv/bin/python -m pytest -n 2 --dist loadfile -m "not zoo" --junitxml=/tmp/suite.xml
    .venv/bin/python -m benchmarks.suite_durations /tmp/suite.xml [--top 20]

A test's time is its setup + call + teardown (pytest's default for JUnit), so a module fixture's cost lands on
the first test that uses it. The kinds follow what the test runs, read off its file and name: a `train.py`
process, the recipes (docs/recipes.md), a full-size model, the zoo sweep, several processes, the rest. The sum is worker
time: with two workers the wall time is about half of it.
"""
from __future__ import annotations

import argparse
import collections
import xml.etree.ElementTree as ET

KINDS = (  # first match wins: (kind, files, words in the test name)
    ('recipes (docs/recipes.md)', ('test_recipes',), ()),
    ('zoo sweep (hub path)', ('test_hub_zoo', 'test_hub_full'), ()),
    ('full-size conversions', (), ('full_size',)),
    ('multi-process', ('test_distributed', 'test_parallel', 'test_storage'), ()),
    ('train.py runs', ('test_train', 'test_make_train', 'test_train_faults'), ('fine_tune', 'learns', 'train')),
)


def kind_of(file: str, name: str) -> str:
    for kind, files, words in KINDS:
        if any(file.startswith(f) for f in files) or any(w in name for w in words):
            return kind
    return 'the rest'


def read(path: str) -> list[tuple[str, str, float]]:
    """(file stem, test name, seconds) of every test case that ran (skipped ones are left out)."""
    out = []
    for case in ET.parse(path).getroot().iter('testcase'):
        if case.find('skipped') is not None:
            continue
        file = case.get('classname', '').split('.')[-1]
        out.append((file, case.get('name', ''), float(case.get('time', 0))))
    return out


def table(cases: list[tuple[str, str, float]]) -> str:
    total = sum(t for *_, t in cases) or 1.0
    by = collections.defaultdict(lambda: [0, 0.0])
    for file, name, t in cases:
        k = by[kind_of(file, name)]
        k[0] += 1
        k[1] += t
    rows = ['| kind | tests | seconds | share |', '|---|---:|---:|---:|']
    for kind, (n, t) in sorted(by.items(), key=lambda kv: -kv[1][1]):
        rows.append(f'| {kind} | {n} | {t:.0f} | {100 * t / total:.0f}% |')
    rows.append(f'| all | {len(cases)} | {total:.0f} | 100% |')
    return '\n'.join(rows)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('xml', nargs='+', help="pytest --junitxml files (several: one suite's parts)")
    p.add_argument('--top', type=int, default=0, help='also list the N slowest tests')
    a = p.parse_args(argv)
    cases = [c for path in a.xml for c in read(path)]
    print(table(cases))
    if a.top:
        print()
        for file, name, t in sorted(cases, key=lambda c: -c[2])[:a.top]:
            print(f'{t:8.1f} s  {kind_of(file, name):24}  {file}::{name}')


if __name__ == '__main__':
    main()
