"""The two layers: the library (bigmm/*, bigmm/io/*) never imports the run layer (bigmm/pipeline/*),
and no two modules of bigmm import each other in a circle.

Imports are read from the source with ``ast`` (module level and inside functions alike), so a
hidden function-local import counts as much as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "bigmm"
RUN_LAYER = "bigmm.pipeline"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The bigmm modules a file imports (relative imports resolved)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("bigmm"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("bigmm"):
                continue
            out.add(mod)
            for a in node.names:  # "from . import x" may name a submodule
                if (PKG.parent / (mod + "." + a.name).replace(".", "/")).with_suffix(".py").exists():
                    out.add(f"{mod}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    files = sorted(PKG.rglob("*.py"))
    names = {_module_name(f) for f in files}
    graph = {}
    for f in files:
        deps = set()
        for m in _imports(f):
            # "from ..errors import X" -> bigmm.errors; a package import counts as its __init__
            while m and m not in names:
                m = m.rsplit(".", 1)[0] if "." in m else ""
            if m and m != _module_name(f):
                deps.add(m)
        graph[_module_name(f)] = deps
    return graph


def test_the_parser_sees_relative_and_local_imports(tmp_path):
    """The checker itself: a relative import inside a function is found and resolved."""
    src = PKG / "passes.py"
    assert "bigmm.tasks" in _imports(src) and "bigmm.errors" in _imports(src)
    assert "bigmm.pipeline.config" in _imports(PKG / "pipeline" / "plan.py")


def test_the_library_never_imports_the_run_layer():
    graph = _graph()
    upward = {m: sorted(d for d in deps if d == RUN_LAYER or d.startswith(RUN_LAYER + "."))
              for m, deps in graph.items()
              if not (m == RUN_LAYER or m.startswith(RUN_LAYER + ".")) and m != "bigmm"}
    upward = {m: d for m, d in upward.items() if d}
    assert not upward, f"library modules importing the run layer: {upward}"
    # the package face offers run-layer names lazily (module __getattr__), never at import
    face = ast.parse((PKG / "__init__.py").read_text())
    top_level = [n for n in face.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all("pipeline" not in (getattr(n, "module", "") or "") for n in top_level)


def test_no_import_circles():
    graph = _graph()
    index, low, stack, on, sccs = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            sccs.append(comp)

    for v in graph:
        if v not in index:
            visit(v)
    circles = [sorted(c) for c in sccs if len(c) > 1]
    assert not circles, f"import circles: {circles}"


STAGE_PKG = "bigmm.pipeline.stage"
ENGINE = ("bigmm.pipeline.engine", "bigmm.pipeline.stages")


def _reaches(graph, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_stage_files_never_import_the_engine():
    """A stage declares what it reads, writes and costs; it never reaches the engine that runs it
    (nor the registry that names it, nor the plan that chooses it), directly or through another
    module."""
    graph = _graph()
    stage_files = [m for m in graph if m == STAGE_PKG or m.startswith(STAGE_PKG + ".")]
    assert len(stage_files) >= 9
    above = set(ENGINE) | {"bigmm.pipeline.registry", "bigmm.pipeline.plan", "bigmm.pipeline.validate",
                           "bigmm.pipeline.cli"}
    bad = {m: sorted(_reaches(graph, m) & above) for m in stage_files}
    assert not {m: d for m, d in bad.items() if d}, bad


def test_the_engine_reaches_stages_only_through_the_registry():
    """The engine and the run entry import no stage file: the stages they run are the registry's,
    chosen by the plan."""
    graph = _graph()
    for m in ENGINE + ("bigmm.pipeline.plan",):
        direct = sorted(d for d in graph[m] if d.startswith(STAGE_PKG + "."))
        assert not direct, f"{m} imports stage files {direct}"
    # only the registry imports the stage files (and stage files one another)
    importers = {m for m, deps in graph.items() for d in deps if d.startswith(STAGE_PKG + ".")}
    assert importers <= {"bigmm.pipeline.registry"} | {m for m in graph if m.startswith(STAGE_PKG)}, importers


def _stage_name_constants(path: Path, names) -> set[str]:
    """String constants of ``path`` equal to a stage name, other than a config section's name
    (``section_fingerprint("reml")``) and a key of a dict (the fingerprinted inputs' layout):
    four stage names are also config sections."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "section_fingerprint":
            skip.update(id(a) for a in node.args)
        elif isinstance(node, ast.Dict):
            skip.update(id(k) for k in node.keys if k is not None)
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and n.value in names and id(n) not in skip}


def test_stage_names_are_written_only_in_the_registry():
    """Every stage name as a string constant is written in the registry alone, never in the
    engine, the run entry, the plan, the run folder's bookkeeping or a stage file."""
    from bigmm.pipeline.registry import STAGES

    files = [PKG / "pipeline" / f for f in ("engine.py", "stages.py", "plan.py", "rundir.py", "memory.py")]
    files += sorted((PKG / "pipeline" / "stage").glob("*.py"))
    found = {str(p.relative_to(PKG)): c for p in files if (c := _stage_name_constants(p, STAGES))}
    assert not found, f"stage names written outside the registry: {found}"
    assert _stage_name_constants(PKG / "pipeline" / "registry.py", STAGES) == set(STAGES)
