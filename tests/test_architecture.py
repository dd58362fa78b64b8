"""The package's shape: layers that import only downwards, no import cycle, a small top level.

Reads the source (AST), so imports inside functions ("deferred" imports) and
`importlib.import_module("tf_lowprec....")` calls count as much as the ones
at the top of a module.  docs/architecture.md describes the layers.
"""

import ast
import os

import pytest

import tf_lowprec

PACKAGE_DIR = os.path.dirname(os.path.abspath(tf_lowprec.__file__))

# Each layer may import the layers below it (lower rank) and itself.
LAYER_RANKS = {
    "tf_lowprec._op_library": 0,
    "tf_lowprec.numerics": 1,
    "tf_lowprec.gemm": 2,
    "tf_lowprec.keras": 3,
    "tf_lowprec.training": 4,
    "tf_lowprec.export": 5,
    "tf_lowprec.datasets": 5,
    "tf_lowprec.comparison": 5,
    "tf_lowprec": 6,  # the public API (__init__)
    "tf_lowprec.cli": 7,  # the command line uses the public API
    "tf_lowprec.__main__": 7,
}
MAX_TOP_LEVEL_MODULES = 12


def _modules():
    """{module name: file path} of every module of the package."""
    found = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        relative = os.path.relpath(folder, PACKAGE_DIR)
        parts = ["tf_lowprec"] + ([] if relative == "." else relative.split(os.sep))
        if not os.path.exists(os.path.join(folder, "__init__.py")):
            continue
        for name in files:
            if name.endswith(".py"):
                stem = name[:-3]
                module = ".".join(parts if stem == "__init__" else parts + [stem])
                found[module] = os.path.join(folder, name)
    return found


def _imported(module, path, modules):
    """The package modules `module` imports, anywhere in its source."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()

    def resolve(name):
        while name and name not in modules:
            name = name.rpartition(".")[0]
        if name:
            targets.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("tf_lowprec"):
                    resolve(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if not base.startswith("tf_lowprec"):
                continue
            for alias in node.names:
                full = f"{base}.{alias.name}"
                resolve(full if full in modules else base)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "import_module":
            for argument in node.args[:1]:
                if isinstance(argument, ast.Constant) and str(argument.value).startswith(
                        "tf_lowprec"):
                    resolve(argument.value)
                else:
                    pytest.fail(f"{module}: import_module with a computed name; "
                                "the import graph cannot be checked")
    targets.discard(module)
    return targets


def _graph():
    modules = _modules()
    return {module: _imported(module, path, modules) for module, path in modules.items()}


def _rank(module):
    name = module
    while name not in LAYER_RANKS:
        name = name.rpartition(".")[0]
        assert name, f"{module} belongs to no layer; add its subpackage to LAYER_RANKS"
    return LAYER_RANKS[name]


def test_the_module_walk_finds_deferred_imports():
    graph = _graph()
    assert "tf_lowprec.keras.adapter" in graph["tf_lowprec.keras.policy"]
    assert "tf_lowprec.cli.compare" in graph["tf_lowprec.cli.main"]  # inside a function
    assert "tf_lowprec.numerics.formats" in graph["tf_lowprec.numerics.rounding"]
    assert len(graph) > 20


def test_no_import_cycle():
    graph = _graph()
    state = {}  # module -> "visiting" | "done"

    def visit(module, stack):
        state[module] = "visiting"
        for target in sorted(graph[module]):
            if state.get(target) == "visiting":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, stack + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_imports_go_only_downwards():
    upward = [f"{module} -> {target}" for module, targets in _graph().items()
              for target in targets if _rank(target) > _rank(module)]
    assert not upward, "imports against the layering:\n" + "\n".join(sorted(upward))


def test_top_level_is_small():
    entries = [name for name in os.listdir(PACKAGE_DIR)
               if name.endswith(".py") or os.path.exists(
                   os.path.join(PACKAGE_DIR, name, "__init__.py"))]
    assert len(entries) <= MAX_TOP_LEVEL_MODULES, sorted(entries)


def test_only_the_adapter_touches_keras_internals():
    offenders = []
    for module, path in _modules().items():
        if module == "tf_lowprec.keras.adapter":
            continue
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Attribute) and node.attr in (
                    "_flatten_layers", "src"):
                names = [f"<attribute {node.attr}>"]
            offenders += [f"{module}: {n}" for n in names
                          if n.startswith("keras.src") or n.startswith("<attribute")]
    assert not offenders, "\n".join(offenders)


def test_an_accumulator_is_declared_in_one_place(monkeypatch):
    """PrecisionSpec and the emulation read the registry; a new entry is all a kernel needs."""
    import tensorflow as tf

    from tf_lowprec.gemm import registry
    from tf_lowprec.keras import emulation

    with pytest.raises(ValueError, match="accumulator must be one of 'fp32', 'int32', 'bf16_dot'"):
        tf_lowprec.PrecisionSpec(activations="bf16", accumulator="fp16_chunked")
    calls = []

    def chunked_matmul(a, b, *, implementation):
        calls.append(implementation)
        return tf.matmul(a, b)

    monkeypatch.setitem(registry.ACCUMULATORS, "fp16_chunked", registry.Accumulator(
        "fp16_chunked", matmul=chunked_matmul, operand_roles=("activations",),
        operand_format=lambda fmt: fmt == tf_lowprec.FP16,
        requirement="accumulator='fp16_chunked' needs FP16 activations"))
    with pytest.raises(ValueError, match="needs FP16 activations"):
        tf_lowprec.PrecisionSpec(activations="bf16", accumulator="fp16_chunked")
    spec = tf_lowprec.PrecisionSpec(activations="fp16", accumulator="fp16_chunked")
    assert emulation.accumulator_gemm("fp16_chunked", "matmul") is chunked_matmul
    import keras

    layer = keras.layers.Dense(2, dtype=tf_lowprec.Policy("chunked", spec=spec))
    layer(tf.ones((3, 4)))
    assert calls == ["auto"]
