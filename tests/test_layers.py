"""The library's structure: no import circle, no import from a higher layer, and no platform named
outside the backends."""

import ast
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "flax_lm"
PLATFORMS = {"cpu", "gpu", "tpu", "cuda", "rocm"}
# The layers, lowest first (docs/architecture.md draws them): a module imports from its own layer or
# the ones below. Each entry is a package (or module) of flax_lm.
LAYERS = (
    ("errors", "json_files", "derived_sizes"),
    ("backends",),
    ("parallel",),                      # logical axes -> mesh axes, processes
    ("ops",),                           # attention kernels and their dispatch, losses
    ("models", "metrics"),
    ("data", "tasks"),
    ("generation",),
    ("config",),                        # load, validate, defaults (knows the families and tasks)
    ("training", "workdir", "interop"),  # a run: its step and loop, its workdir, its import and export
    ("cli",),
)
# (file, literal): why it is no JAX platform
NOT_A_PLATFORM = {("flax_lm/interop/hf_files.py", "cpu"): "PyTorch's map_location for torch.load"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(LIBRARY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each library module -> the library modules it imports, at the top or inside a function. A
    package's own `__init__` is not counted for its submodules (Python runs it before any of them)."""
    files = {_module_name(p): p for p in LIBRARY.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{a.name}" for a in node.names} & files.keys()
                found |= submodules or {node.module}
        graph[name] = {m for m in found if m in files and m != name and not name.startswith(m + ".")}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, path = {}, []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = "done"
        return None
    return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)


def test_the_library_has_no_import_circle():
    graph = _imports()
    assert "flax_lm.workdir.run" in graph and graph["flax_lm.workdir.run"]  # the walk sees the modules and their imports
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    found = [i for i, names in enumerate(LAYERS) if part in names]
    assert found, f"{module} is in no layer of LAYERS"
    return found[0]


def _upward(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {d}" for m in sorted(graph) for d in sorted(graph[m])
            if m != "flax_lm" and _layer(d) > _layer(m)]


def test_no_module_imports_from_a_higher_layer():
    graph = _imports()
    assert not _upward(graph), "\n".join(_upward(graph))


def test_an_upward_import_is_found_where_there_is_one():
    assert _upward({"flax_lm.models.gpt2": {"flax_lm.training.optim", "flax_lm.ops.attention"}}) == [
        "flax_lm.models.gpt2 imports flax_lm.training.optim"]


def test_a_circle_is_found_where_there_is_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_platform_is_named_in_code_outside_the_backends():
    """Platform names as string literals (a branch on "cpu", a `platform=` argument) live in
    `flax_lm/backends` alone; prose in comments and docstrings may name them."""
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        if path.is_relative_to(LIBRARY / "backends"):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                      and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and node.value.lower() in PLATFORMS
                    and (str(path.relative_to(LIBRARY.parent)), node.value) not in NOT_A_PLATFORM):
                offenders.append(f"{path.relative_to(LIBRARY.parent)}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr in ("default_backend", "platform"):
                offenders.append(f"{path.relative_to(LIBRARY.parent)}:{node.lineno}: .{node.attr}")
    assert not offenders, "\n".join(offenders)
