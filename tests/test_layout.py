"""The code's shape, checked: imports only go down the layers, no import cycles (imports inside functions count), the
project's own imports sit at the top of each file, no file over ~500 lines, no function over ~80 lines.

Layers, top to bottom (DESIGN.md "Layers"); a module may import its own layer or any layer below:
    entry    cli, client, __main__, serve/
    loops    pipeline, refine
    stages   synth/, train/, evaluate/     (stages do not import each other, except evaluate → synth for the teacher)
    engine   models, bases (registry bases: fetch + convert), inference/ (the decoding core), predictor, precision
    base     errors, task, config, contract, runs
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"schemabuild": "schemabuild", "schemabuild.serve": "serve"}  # import name: folder (pyproject's package-dir)
LAYERS = {
    "entry": ["schemabuild.cli", "schemabuild.client", "schemabuild.__main__", "schemabuild.train.__main__",
              "schemabuild.serve"],
    "loops": ["schemabuild.pipeline", "schemabuild.refine"],
    "stages": ["schemabuild.synth", "schemabuild.train", "schemabuild.evaluate"],
    "engine": ["schemabuild.models", "schemabuild.bases", "schemabuild.inference", "schemabuild.predictor",
               "schemabuild.precision"],
    "base": ["schemabuild.errors", "schemabuild.task", "schemabuild.config", "schemabuild.contract", "schemabuild.runs",
             "schemabuild"],  # the package itself: `from schemabuild import __version__`
}
RANK = {name: rank for rank, layer in enumerate(reversed(list(LAYERS))) for name in LAYERS[layer]}
STAGE_EXCEPTIONS = {("schemabuild.evaluate", "schemabuild.synth")}  # eval --compare teacher
MAX_FILE_LINES = 520  # "about 500"
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = {"schemabuild/config.py:click_options"}  # turns a dataclass into the CLI option list
PENDING_SPLIT: set[str] = set()  # files exempt while being split (none now)
# The one lazy project import: the app factory loads the routes (which need fastapi at import) when it builds an app,
# so the CLI can import `schemabuild.serve.app.run_server` and `schemabuild --help` still loads no fastapi.
LAZY_HTTP = {("serve/app.py", "schemabuild.serve.routes")}


def module_name(path: Path) -> str:
    """The import name of a project file (serve/ installs as schemabuild.serve)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    name = ".".join(parts)
    for package, folder in PACKAGES.items():
        if name == folder or name.startswith(folder + "."):
            return package + name[len(folder):]
    raise AssertionError(f"{path} is in no package")


def modules() -> dict[str, Path]:
    return {module_name(path): path for folder in PACKAGES.values() for path in sorted((ROOT / folder).rglob("*.py"))}


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, int, bool]]:
    """(project module imported, line, inside a function) for every import statement, at any depth."""
    tree = ast.parse(path.read_text())
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []

    def visit(node, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            else:
                visit(child, inner)
                continue
            for name in names:
                while name and name not in known:
                    name = name.rpartition(".")[0]
                if name:
                    found.append((name, child.lineno, in_function))
    visit(tree, False)
    return found


def layer_of(module: str) -> str:
    while module not in RANK:
        module = module.rpartition(".")[0]
    return module


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {i for i, _, _ in imports(p, known) if i != m} for m, p in known.items()}


def test_every_module_has_a_layer():
    assert all(layer_of(m) for m in modules()), "a new top-level module needs a place in LAYERS"


def test_imports_only_go_down():
    known = modules()
    wrong = []
    for module, path in known.items():
        if module == "schemabuild":  # the public facade: `Client` is imported lazily from there, by name
            continue
        src = layer_of(module)
        for target, line, _ in imports(path, known):
            dst = layer_of(target)
            if dst == src or target == "schemabuild":
                continue
            upward = RANK[dst] > RANK[src]
            sideways = RANK[dst] == RANK[src] and RANK[src] == RANK["schemabuild.synth"] and (src, dst) not in STAGE_EXCEPTIONS
            if upward or sideways:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {src} imports {target}")
    assert not wrong, "imports must go down the layers:\n" + "\n".join(wrong)


def test_no_import_cycles():
    edges = graph()
    edges["schemabuild"] = set()  # the facade's lazy `Client` is an attribute hook, not an import at load time
    state, cycles = {}, []

    def walk(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            walk(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_project_imports_sit_at_the_top():
    known = modules()
    late = [f"{p.relative_to(ROOT)}:{line}: {target}" for m, p in known.items()
            if m != "schemabuild" and str(p.relative_to(ROOT)) not in PENDING_SPLIT
            for target, line, inside in imports(p, known)
            if inside and (str(p.relative_to(ROOT)), target) not in LAZY_HTTP]
    assert not late, "import the project's own modules at the top of the file:\n" + "\n".join(late)


def test_the_cli_loads_no_heavy_library():
    """`schemabuild --help` stays instant: torch & co load only inside the functions that need them."""
    heavy = ("torch", "transformers", "peft", "trl", "datasets", "openai", "fastapi", "uvicorn", "xgrammar", "httpx")
    code = f"import sys, schemabuild.cli; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_no_file_or_function_is_too_long():
    long = []
    for pkg in PACKAGES.values():
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if str(rel) in PENDING_SPLIT:
                continue
            text = path.read_text()
            if len(text.splitlines()) > MAX_FILE_LINES:
                long.append(f"{rel}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES and f"{rel}:{node.name}" not in LONG_FUNCTIONS_ALLOWED:
                        long.append(f"{rel}:{node.lineno}: {node.name} is {n} lines")
    assert not long, "split these:\n" + "\n".join(long)


@pytest.mark.slow
def test_the_wheel_holds_every_module_and_no_bare_serve_package(tmp_path):
    """A non-editable install gets every subpackage (serve/ as schemabuild.serve, with its page) and nothing else."""
    import shutil
    import zipfile

    # built from a copy: a stale build/ folder in the checkout (setuptools reuses it) cannot leak into the wheel
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "runs", ".schemabuild", "*.egg-info",
                                                             "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = tmp_path.glob("schemabuild-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
                for name, path in modules().items()}
    assert expected <= names, sorted(expected - names)
    assert "schemabuild/serve/static/index.html" in names
    tops = {name.split("/")[0] for name in names}
    assert {top for top in tops if not top.endswith(".dist-info")} == {"schemabuild"}, tops  # no bare `serve`
