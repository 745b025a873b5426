"""The layers read from the folders: imports point down only, and no module circle.

    face      metarl/cli/            the metarl command, benchmark, few-shot command
    learners  agents/, metarl/fewshot/   algorithms, each on the agent/learner contract
    envs      envs/                  task families, declaring their backends to the registry
    core      metarl/ (the rest), one folder per concern, each importing only the ones
              before it (CORE_ORDER): numerics.py · tasks/ (the task API a family
              implements) · stepping/ (the family registry and the batched backends) ·
              learning/ (policies, functional parameters, returns, the TRPO solver) ·
              sampling/ (one Sampler: native, torch, subprocess, Ray) · runs/ (configs, run
              directories, checkpoints, the one training loop) · adaptation/ (the policy-gradient
              inner step, the meta-trainer) · evaluation/ (the protocol, plots, video) ·
              agent.py (the agent contract)

A module may import from its own layer and the layers below; the core imports no env family
(families register themselves with the core's registry). Two modules are above the core by
purpose and say so here: the package root ``metarl/__init__.py`` (registers metarl's own
families on import) and ``metarl/testing.py`` (fault-injection families for the tests).
Every import counts, at module level or inside a function, and so does
``importlib.import_module("metarl...")`` with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: import name -> folder (envs/ and agents/ install as metarl.envs / metarl.agents)
PACKAGES = {
    "metarl": ROOT / "metarl",
    "metarl.envs": ROOT / "envs",
    "metarl.agents": ROOT / "agents",
}
RANK = {"core": 0, "envs": 1, "learners": 2, "face": 3}
#: modules placed above their folder's layer, and why (see the module doc)
ABOVE = {"metarl": "envs", "metarl.testing": "envs"}


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


MODULES = _modules()


def _layer(name: str) -> str:
    if name in ABOVE:
        return ABOVE[name]
    if name.startswith("metarl.cli"):
        return "face"
    if name.startswith(("metarl.agents", "metarl.fewshot")):
        return "learners"
    if name.startswith("metarl.envs"):
        return "envs"
    return "core"


def _imported(name: str, path: Path) -> set[str]:
    """The metarl modules ``path`` imports (the longest registered prefix of each name)."""
    names: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, *([node.module] if node.module else [])])
            subs = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            names.update(subs or {base})  # `from metarl import registry` is the submodule
            names.update(f"{base}.{a.name}" for a in node.names)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    out = set()
    for n in names:
        while n and n not in MODULES:
            n = n.rpartition(".")[0]
        if n and n != name:
            out.add(n)
    return out


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}

#: The core's folders (and its two single-file modules), lowest first.
CORE_ORDER = ("numerics", "tasks", "stepping", "learning", "sampling", "runs", "adaptation",
              "evaluation", "agent")  # fmt: skip


def _core_group(name: str) -> str | None:
    """The core folder (or single module) ``name`` lives in; None outside the core."""
    if _layer(name) != "core" or name in ABOVE or name == "metarl":
        return None
    return name.split(".")[1]


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _core_group(n)))
def test_core_folders_import_down(name: str) -> None:
    """Within the core, a module imports from its own folder and the folders before it."""
    group = _core_group(name)
    assert group in CORE_ORDER, f"{name}: metarl/{group} is not one of the core's folders"
    mine = CORE_ORDER.index(group)
    up = sorted(d for d in GRAPH[name]
                if (g := _core_group(d)) and CORE_ORDER.index(g) > mine)  # fmt: skip
    assert not up, f"{name} (metarl/{group}) imports from a core folder above it: {up}"


def test_the_layout_is_read() -> None:
    """Not vacuous: the known modules are there, with their imports."""
    assert {"metarl.cli", "metarl.runs.training", "metarl.agents.maml_trpo",
            "metarl.envs.navigation", "metarl.fewshot.train", "metarl.cli.benchmark"} <= set(
        MODULES)  # fmt: skip
    assert "metarl.runs.training" in GRAPH["metarl.agents.maml_trpo"] or (
        "metarl.adaptation.meta_training" in GRAPH["metarl.agents.maml_trpo"]
    )
    assert "metarl.agents" in GRAPH["metarl.cli"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down(name: str) -> None:
    mine = RANK[_layer(name)]
    up = sorted(d for d in GRAPH[name] if RANK[_layer(d)] > mine)
    assert not up, f"{name} ({_layer(name)}) imports from a layer above: {up}"


def test_no_module_circle() -> None:
    """No two modules import each other, through any path (a package's __init__ importing
    its own submodules to register or re-export them is not a circle)."""

    def edges(name: str) -> set[str]:
        return {d for d in GRAPH[name] if not d.startswith(name + ".")}

    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """The check can fail: a core module importing an agent is reported."""
    path = tmp_path / "bad.py"
    path.write_text("from metarl.agents import get_agent\n")
    MODULES["metarl.bad"] = path
    try:
        deps = _imported("metarl.bad", path)
        assert "metarl.agents" in deps and RANK[_layer("metarl.agents")] > RANK["core"]
    finally:
        del MODULES["metarl.bad"]


def test_the_core_order_catches_an_upward_import() -> None:
    """The folder check can fail: the task API importing the training loop is above it."""
    assert CORE_ORDER.index(_core_group("metarl.runs.training") or "") > CORE_ORDER.index(
        _core_group("metarl.tasks.env") or ""
    )
