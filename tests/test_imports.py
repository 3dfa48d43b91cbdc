"""The import graph of vitjax/ and porting/ has no cycle, counting imports inside functions too: a lazy import
that closes a cycle is still two modules that cannot be understood (or changed) one at a time."""
import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('vitjax', 'porting')


def modules() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith('.py'):
                    rel = os.path.relpath(os.path.join(dirpath, f), ROOT)[:-3].replace(os.sep, '.')
                    out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = os.path.join(dirpath, f)
    return out


def imports(name: str, path: str, known: set[str]) -> set[str]:
    """First-party modules `name` imports anywhere in its body (a package's __init__ excluded as a target
    when the import names a submodule: `from vitjax.models import vit` depends on vitjax.models.vit)."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                parts = package.split('.')
                base = '.'.join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            subs = {f'{base}.{a.name}' for a in node.names} & known
            found |= subs or {base}
    return {m for m in found if m in known and m != name}


def find_cycle(graph: dict[str, set[str]]):
    state, stack = {}, []

    def visit(n):
        state[n] = 'open'
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == 'open':
                return stack[stack.index(m):] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 'done'
        stack.pop()
        return None
    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_no_import_cycle():
    mods = modules()
    graph = {n: imports(n, p, set(mods)) for n, p in mods.items()}
    # a package __init__ re-exporting its submodules is not a dependency of those submodules on each other
    for n in graph:
        graph[n] = {m for m in graph[n] if not (mods[m].endswith('__init__.py') and n.startswith(m + '.'))}
    cycle = find_cycle(graph)
    assert cycle is None, ' -> '.join(cycle)


def test_the_walk_sees_a_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b'}, 'b': set()}) is None


def test_train_py_reexecutes_before_jax_loads():
    """train.py re-executes itself with the malloc settings (vitjax/hostmem.py) before it imports jax, TensorFlow or
    the model code, so a run pays their import once, not twice."""
    import subprocess
    import sys
    code = ('import runpy, sys, vitjax.hostmem as h\n'
            'h.reexec_with_tuned_malloc = lambda: print(sorted(m for m in ("jax", "tensorflow", "flax", "vitjax.main") '
            'if m in sys.modules)) or sys.exit(0)\n'
            'sys.argv = ["train.py"]; runpy.run_path("train.py", run_name="__main__")')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == '[]', (out.stdout, out.stderr[-2000:])
