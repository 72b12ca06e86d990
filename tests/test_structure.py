"""The package's shape, read from its source (no import): no import cycles, modules of a readable size,
settings read as typed attributes, imports at the top, and the deployment code apart from the runtime."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sparkvision"
MAX_LINES = 500
# Packages sparkvision's core does not require (pyproject's extras, or what a Databricks runtime brings):
# a function may import these late, so that the module imports without them.
OPTIONAL = {"pyspark", "py4j", "tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "openvino", "mlflow",
            "boto3", "botocore", "databricks", "jsonschema", "matplotlib", "sklearn", "pandas", "pyarrow", "chispa",
            "IPython", "grpc", "psutil", "fsspec", "google", "azure", "requests", "urllib3", "flask"}
# the runtime: what runs a job; deploy/ (bundles, clusters, the workspace API) may use it, never the reverse
RUNTIME = ("sparkvision.run", "sparkvision.ml", "sparkvision.stages", "sparkvision.tracking", "sparkvision.settings",
           "sparkvision.errors", "sparkvision.columns", "sparkvision.secrets", "sparkvision.compat")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the sparkvision module it names, or the top-level package of another distribution
    line: int
    text: str  # the source line
    in_function: bool


def _name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> list[Import]:
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    tree = ast.parse(source)
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[Import] = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            names = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    parts = here.split(".")
                    base = ".".join(parts[: len(parts) - child.level + 1])
                    target = f"{base}.{child.module}" if child.module else base
                else:
                    target = child.module or ""
                names = [f"{target}.{a.name}" for a in child.names] + [target]
            for n in names:
                if n.split(".")[0] == "sparkvision":
                    t = _resolve(n)
                    if t is None or t == module or module.startswith(t + "."):
                        continue
                else:
                    t = n.split(".")[0]
                out.append(Import(module, t, child.lineno, lines[child.lineno - 1], in_function))
            visit(child, nested)

    visit(tree, False)
    # one record per (target, line): ``from a import b, c`` names a and a.b and a.c
    seen, unique = set(), []
    for imp in out:
        key = (imp.target, imp.line) if imp.target.startswith("sparkvision") else (imp.line,)
        if key not in seen:
            seen.add(key)
            unique.append(imp)
    return unique


IMPORTS = {m: _imports(m) for m in MODULES}


def _internal_graph() -> dict[str, set[str]]:
    return {m: {i.target for i in imps if i.target.startswith("sparkvision") and i.target in MODULES}
            for m, imps in IMPORTS.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {m: set(t) for m, t in _internal_graph().items()}
    graph["sparkvision.errors"].add("sparkvision.cli")  # the ground floor importing the top: a cycle through cli
    assert any("sparkvision.errors" in c and "sparkvision.cli" in c for c in _cycles(graph))


def test_the_import_graph_has_no_cycles():
    """Module-level and function-level imports alike (a late import hides a cycle, it does not remove it)."""
    assert _cycles(_internal_graph()) == []


def test_no_module_is_over_the_size_limit():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_the_ground_floor_imports_nothing_of_the_package():
    for module in ("sparkvision.errors", "sparkvision.columns"):
        assert [i.text for i in IMPORTS[module] if i.target.startswith("sparkvision")] == []


def test_the_runtime_never_imports_deploy():
    bad = [f"{i.module}:{i.line}: {i.text.strip()}" for m, imps in IMPORTS.items() if m.startswith(RUNTIME)
           for i in imps if i.target.startswith("sparkvision.deploy")]
    assert bad == []


def test_imports_sit_at_the_top_unless_the_dependency_is_optional():
    """A function-level import is kept only for a package the core does not require (the module must
    import without it); one of the package's own modules, or a required package, is imported at the top.
    A kept exception says why on its line (``# optional: ...`` or ``# lazy: ...``)."""
    bad = []
    for module, imps in IMPORTS.items():
        for i in imps:
            if not i.in_function:
                continue
            optional = not i.target.startswith("sparkvision") and i.target in OPTIONAL
            if not optional and not re.search(r"#\s*(optional|lazy)\b", i.text):
                bad.append(f"{module}:{i.line}: {i.text.strip()}")
    assert bad == []


_STRING_KEY = re.compile(r"""\b\w*(cfg|config|settings)\w*\s*\[\s*["']|\b\w*(cfg|settings)\w*\.get\(\s*["']""")


def test_no_code_reads_settings_by_string_key():
    """Settings are typed attributes (``cfg.featurize.engine``); only the settings module handles keys."""
    bad = []
    for module, path in MODULES.items():
        if module == "sparkvision.settings":
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if _STRING_KEY.search(line.split("#")[0]):
                bad.append(f"{module}:{n}: {line.strip()}")
    assert bad == []


@pytest.mark.parametrize("line, reads", [('x = cfg["featurize"]["engine"]', True), ("m = data_cfg['max_file_mb']", True),
                                          ('cfg.get("spark")', True), ("x = cfg.featurize.engine", False)])
def test_the_string_key_check_reads_what_it_should(line, reads):
    assert bool(_STRING_KEY.search(line)) is reads
