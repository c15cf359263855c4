"""The code's own checks, run with the test suite (so CI runs them): ruff (lint and
format), the import-linter contracts of the layers (pyproject.toml), no import cycles
between modules, mypy (its configuration in pyproject.toml: strict on blockbuster.core)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CODE = ["blockbuster", "tests", "bench"]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    if exe.exists():
        return str(exe)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]' installs it")
    return found


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_ruff_lint():
    p = _run(_tool("ruff"), "check", *CODE)
    assert p.returncode == 0, p.stdout + p.stderr


def test_ruff_format():
    p = _run(_tool("ruff"), "format", "--check", *CODE)
    assert p.returncode == 0, "run `ruff format blockbuster tests bench`:\n" + p.stdout


def test_layers_point_one_way():
    p = _run(_tool("lint-imports"), "--no-cache")
    assert p.returncode == 0, p.stdout + p.stderr


def test_no_import_cycles():
    """No two modules of blockbuster import each other, directly or through others,
    not even inside functions (type-checking-only imports aside)."""
    import grimp

    graph = grimp.build_graph("blockbuster", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    index = {m: i for i, m in enumerate(modules)}
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    # Tarjan's strongly connected components: a component of two or more is a cycle.
    # A package's __init__ importing its own private modules is how packages expose
    # names, not a cycle: those edges are left out.
    counter, stack, on, low, num, cycles = [0], [], set(), {}, {}, []

    def visit(v: str) -> None:
        num[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index or w.startswith(v + "."):
                continue
            if w not in num:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], num[w])
        if low[v] == num[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for m in modules:
        if m not in num:
            visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_types():
    p = _run(sys.executable, "-m", "mypy")
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]


def test_mypy_names_every_package_blockbuster_imports():
    """mypy skips third-party modules by default (pyproject: `follow_imports = "skip"`, so
    a cold run does not analyse Prefect's server side and torch); each package blockbuster
    imports must be named in an override (followed, skipped on purpose, or without types),
    else its types would silently become Any."""
    import grimp

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert config["follow_imports"] == "skip"
    named = {m.removesuffix(".*") for o in config["overrides"] for m in o["module"]}
    graph = grimp.build_graph(
        "blockbuster", include_external_packages=True, exclude_type_checking_imports=False
    )
    imported = {m for m in graph.modules if m.split(".")[0] != "blockbuster"} - set(
        sys.stdlib_module_names
    )
    assert imported, "grimp found no third-party import: the check checks nothing"
    assert imported <= named, (
        f"packages blockbuster imports that pyproject's [tool.mypy] overrides do not name: "
        f"{sorted(imported - named)}; add them to the followed list (or skip them on purpose)"
    )
