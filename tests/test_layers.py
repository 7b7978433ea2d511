"""The package's shape: imports go down the layers, never in a cycle; no unit outgrows
its job. Read from the source (AST), so it costs milliseconds and runs nothing."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "mpsysv"

# The layers, bottom first: a module may import its own layer or a lower one.
LAYERS = {
    "mpsysv._ipc": 1,
    "mpsysv._queue": 2,
    "mpsysv._shm": 2,
    "mpsysv._gc": 3,
    "mpsysv.primitives": 4, "mpsysv._connection": 4, "mpsysv.queues": 4,
    "mpsysv.shared": 4, "mpsysv.context": 4, "mpsysv.patch": 4, "mpsysv": 4,
    "mpsysv._tools": 5, "mpsysv.cli": 5, "mpsysv.__main__": 5,
}
# Sibling packages of one layer stay apart (the queue protocol and the shared-memory
# internals share only what is below them).
APART = {("mpsysv._queue", "mpsysv._shm"), ("mpsysv._shm", "mpsysv._queue")}
MAX_MODULE_LINES = 750
MAX_CLASS_LINES = 450


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _layer(module: str) -> str:
    """The LAYERS key that *module* belongs to (its longest prefix)."""
    best = None
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and (best is None or len(key) > len(best)):
            best = key
    assert best is not None, f"{module} belongs to no layer: add it to LAYERS"
    return best


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: pathlib.Path, known: dict) -> set:
    """The mpsysv modules *module* imports, at top level or inside functions (imports
    only a type checker runs are left out)."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = set()

    def resolve(level: int, name: str) -> str:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        if level > 1:
            base = base[:-(level - 1)]
        return ".".join(base + ([name] if name else []))

    def visit(node):
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "mpsysv" or alias.name.startswith("mpsysv."):
                    found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            target = resolve(node.level, node.module or "") if node.level else node.module
            if target == "mpsysv" or (target or "").startswith("mpsysv."):
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in known else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    return found


def _graph() -> dict:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def test_every_import_goes_down_or_stays_in_its_layer():
    wrong = []
    for module, targets in _graph().items():
        mine = _layer(module)
        for target in targets:
            theirs = _layer(target)
            if LAYERS[theirs] > LAYERS[mine] or (mine, theirs) in APART:
                wrong.append(f"{module} (layer {LAYERS[mine]}) imports {target} "
                             f"(layer {LAYERS[theirs]})")
    assert not wrong, "imports that go up or across:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle_between_modules():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            walk(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_outgrows_its_job(name):
    path = _modules()[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path}: {lines} lines (split it by job)"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef):
            size = node.end_lineno - node.lineno + 1
            assert size <= MAX_CLASS_LINES, f"{path}: class {node.name} has {size} lines"


def test_the_layer_test_sees_an_upward_import(tmp_path):
    """The checker itself: an import from _ipc up into queues is reported."""
    fake = tmp_path / "mpsysv" / "_ipc"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from .. import queues\n")
    known = {"mpsysv.queues": None, "mpsysv._ipc.bad": fake / "bad.py"}
    targets = _imports("mpsysv._ipc.bad", fake / "bad.py", known)
    assert targets == {"mpsysv.queues"}
    assert LAYERS[_layer("mpsysv.queues")] > LAYERS[_layer("mpsysv._ipc.bad")]
