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
    """train.py re-executes itself with the malloc settings (vitjax/train/hostmem.py) before it imports jax,
    TensorFlow or the model code, so a run pays their import once, not twice."""
    import subprocess
    import sys
    code = ('import runpy, sys, vitjax.train.hostmem as h\n'
            'h.reexec_with_tuned_malloc = lambda: print(sorted(m for m in '
            '("jax", "tensorflow", "flax", "vitjax.train.main") '
            'if m in sys.modules)) or sys.exit(0)\n'
            'sys.argv = ["train.py"]; runpy.run_path("train.py", run_name="__main__")')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == '[]', (out.stdout, out.stderr[-2000:])


# The layers of vitjax/, lowest first (docs/architecture.md): a module imports its own layer and those below it,
# never one above. `vitjax` itself is the package's front (create_model, load, save): the weights layer.
LAYERS = (
    ('models', ('vitjax.models',)),
    ('weights', ('vitjax', 'vitjax.weights', 'vitjax.hub', 'vitjax.io', 'vitjax.adapt', 'vitjax.registry',
                 'vitjax.loader', 'vitjax.nnx', 'vitjax.labels', 'vitjax.storage')),
    ('inference', ('vitjax.inference', 'vitjax.images')),
    ('training', ('vitjax.train',)),
    ('cli', ('vitjax.cli',)),
)
TORCH_SIDE = ('porting', 'torch', 'torchvision', 'timm', 'transformers')
TENSORFLOW = ('tensorflow', 'tensorflow_datasets')


def layer_of(module: str) -> int:
    """The index in LAYERS of the longest prefix naming `module` (`vitjax` only for the package itself)."""
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if module == p or p != 'vitjax' and module.startswith(p + '.')), default=None)
    assert best is not None, f'{module} is in no layer of tests/test_imports.py LAYERS'
    return best[1]


def top_level_imports(path: str) -> set[str]:
    """The top-level package of every absolute import in the file, inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            found |= {a.name.partition('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.partition('.')[0])
    return found


def test_layers():
    """Every problem at once: a vitjax module importing the torch side (porting, torch, timm), TensorFlow outside
    the training layer, or a layer above its own."""
    mods = {n: p for n, p in modules().items() if n.split('.')[0] == 'vitjax'}
    problems = []
    for name, path in sorted(mods.items()):
        theirs = top_level_imports(path)
        problems += [f'{name} imports {m}' for m in sorted(theirs & set(TORCH_SIDE))]
        if LAYERS[layer_of(name)][0] != 'training':
            problems += [f'{name} imports {m} outside the training layer' for m in sorted(theirs & set(TENSORFLOW))]
        for m in sorted(imports(name, path, set(mods))):
            if layer_of(m) > layer_of(name):
                problems.append(f'{name} ({LAYERS[layer_of(name)][0]}) imports {m} ({LAYERS[layer_of(m)][0]})')
    assert not problems, '\n'.join(problems)


def test_the_layer_check_sees_what_it_guards(tmp_path):
    bad = tmp_path / 'bad.py'
    bad.write_text('def f():\n    import torch\n    from porting import convert\n    import tensorflow.compat\n')
    assert top_level_imports(str(bad)) == {'torch', 'porting', 'tensorflow'}
    names = ('vitjax', 'vitjax.models.vit', 'vitjax.train.data.decode', 'vitjax.cli')
    assert [LAYERS[layer_of(m)][0] for m in names] == ['weights', 'models', 'training', 'cli']


def test_the_library_runs_without_the_torch_side():
    """`import vitjax`, a model, a model directory saved and loaded: no torch, timm, porting or TensorFlow is
    loaded on the way (the static check above misses an import hidden behind importlib)."""
    import subprocess
    import sys
    code = ('import sys, tempfile, vitjax\n'
            'm, v = vitjax.create_model("vit_tiny_patch16_224", depth=1, img_size=32)\n'
            'd = tempfile.mkdtemp(); vitjax.save(d + "/m", m, v); vitjax.load(d + "/m")\n'
            'import vitjax.hub, vitjax.nnx, vitjax.inference, vitjax.weights\n'
            f'print(sorted(m for m in sys.modules if m.partition(".")[0] in {TORCH_SIDE + TENSORFLOW!r}))')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == '[]', (out.stdout, out.stderr[-2000:])
