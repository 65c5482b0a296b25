"""The folder tree is the architecture: these rules are read from the code's imports.

- ``finetune_core`` never imports Streamlit, ``ui`` or ``views``.
- Packages import only their own layer or the layers below (``training`` never ``jobs``).
- No import cycles; no project imports hidden inside functions.
- No module but ``finetune_core/runs.py`` spells a run-folder file name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from finetune_core.runs import RunPaths

ROOT = Path(__file__).resolve().parents[3]
CORE = ROOT / "finetune_core"

# Lowest first: a module may import its own layer and the layers before it.
LAYERS: list[tuple[str, ...]] = [
    (
        "config",
        "fsutil",
        "device",
        "store",
        "runs",
        "presets",
        "resources",
        "schema",
        "store_health",
        "workspace_backup",
        "csvsafe",
    ),  # fmt: skip
    ("auth",),
    ("data",),
    ("workspace_repair",),
    ("models",),
    ("training",),
    ("evaluation",),
    ("export",),
    ("reporting",),
    ("jobs",),
    ("cli", "__main__"),
]
UI_ROOTS = ("streamlit", "ui", "views")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    parts = module.split(".")
    if parts[0] != "finetune_core" or len(parts) == 1:
        return -1  # the package root itself: no code of its own
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS")


def imports(path: Path) -> list[tuple[int, str, bool]]:
    """(line, imported module, inside a function) for every import in a file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    in_function: set[int] = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(
                id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)
            )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, id(node) in in_function) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: use absolute imports"
            base = node.module or ""
            found.append((node.lineno, base, id(node) in in_function))
            found += [
                (node.lineno, f"{base}.{a.name}", id(node) in in_function) for a in node.names
            ]
    return found


def core_files(root: Path = ROOT) -> list[Path]:
    return sorted((root / "finetune_core").rglob("*.py"))


def known_module(target: str, modules: set[str]) -> str | None:
    parts = target.split(".")
    for k in range(len(parts), 1, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def test_core_never_imports_the_ui() -> None:
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for path in core_files()
        for line, target, _ in imports(path)
        if target.split(".")[0] in UI_ROOTS
    ]
    assert not bad, bad


def layer_violations(root: Path = ROOT) -> list[str]:
    files = core_files(root)
    modules = {module_name(p, root) for p in files}
    bad = []
    for path in files:
        here = module_name(path, root)
        for line, target, _ in imports(path):
            hit = known_module(target, modules)
            if hit and layer_of(hit) > layer_of(here):
                bad.append(
                    f"{path.relative_to(root)}:{line}: {here} imports {hit} (a higher layer)"
                )
    return sorted(set(bad))


def test_imports_point_down_the_layers() -> None:
    bad = layer_violations()
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    modules = {module_name(p) for p in core_files()}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for path in core_files():
        here = module_name(path)
        for _, target, _ in imports(path):
            hit = known_module(target, modules)
            # a package's own __init__ is not an edge
            if (
                hit
                and hit != here
                and not hit.startswith(here + ".")
                and not here.startswith(hit + ".")
            ):
                edges[here].add(hit)
    state: dict[str, int] = {}
    path_stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path_stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path_stack[path_stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path_stack.pop()
        return None

    for module in sorted(modules):
        if module not in state:
            cycle = visit(module)
            assert cycle is None, " -> ".join(cycle)


# Project imports inside functions, allowed only for optional heavy dependencies.
ALLOWED_LOCAL_IMPORTS: set[str] = set()


def test_project_imports_sit_at_the_top_of_modules() -> None:
    hidden = [
        f"{path.relative_to(ROOT)}:{line} {target}"
        for path in [
            *core_files(),
            *sorted((ROOT / "ui").rglob("*.py")),
            *sorted((ROOT / "views").rglob("*.py")),
        ]
        for line, target, local in imports(path)
        if local
        and target.split(".")[0] in ("finetune_core", "ui", "views")
        and module_name(path) + ":" + target not in ALLOWED_LOCAL_IMPORTS
    ]
    assert not hidden, "\n".join(hidden)


def run_folder_names() -> set[str]:
    paths = RunPaths(Path("/run"))
    found: set[str] = set()
    for name in dir(RunPaths):
        attr = getattr(RunPaths, name)
        if isinstance(attr, property):
            value = getattr(paths, name)
        elif name in ("checkpoint",):
            value = paths.checkpoint("best")
            found.add(paths.checkpoint("last").name)
        else:
            continue
        if (
            isinstance(value, Path)
            and value != paths.root
            and value.parent.is_relative_to(paths.root)
        ):
            found.add(value.name)
    return found


# Generic folder names that other things share ("export" is also a command, "errors" a
# health-report key) and torch hub's own "checkpoints" folder: checked as files only.
FOLDER_NAMES_NOT_CHECKED = {"export", "rank-errors"}
TORCH_HUB_CHECKPOINTS = "finetune_core/models/weights.py"


def spelled_names(path: Path, names: set[str], root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.ClassDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    hits = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            value = node.value
            for name in names:
                if value == name or value.endswith("/" + name):
                    hits.append(f"{path.relative_to(root)}:{node.lineno} spells {name!r}")
    return hits


def test_the_run_folder_names_are_spelled_only_in_runs_py() -> None:
    names = run_folder_names()
    assert {"config.json", "metrics.json", "metrics.jsonl", "best.pt", "eval.json"} <= names
    names -= FOLDER_NAMES_NOT_CHECKED
    files = [
        *core_files(),
        *sorted((ROOT / "ui").rglob("*.py")),
        *sorted((ROOT / "views").rglob("*.py")),
        ROOT / "app.py",
    ]
    hits = [
        h
        for p in files
        if p != CORE / "runs.py"
        for h in spelled_names(
            p,
            names
            - ({"checkpoints"} if str(p.relative_to(ROOT)) == TORCH_HUB_CHECKPOINTS else set()),
        )
    ]
    assert not hits, "\n".join(hits)


def test_the_rules_catch_a_violation(tmp_path: Path) -> None:
    """The checks above can fail: planted violations in a copy of the package are found."""
    copy = tmp_path / "copy"
    (copy / "finetune_core" / "training").mkdir(parents=True)
    (copy / "finetune_core" / "jobs").mkdir(parents=True)
    (copy / "finetune_core" / "jobs" / "manager.py").write_text("X = 1\n")
    (copy / "finetune_core" / "training" / "loop.py").write_text(
        "from finetune_core.jobs import manager\n\n\ndef f():\n    return 'runs/x/metrics.json'\n"
    )
    assert layer_violations(copy) == [
        "finetune_core/training/loop.py:1: finetune_core.training.loop imports "
        "finetune_core.jobs.manager (a higher layer)"
    ]
    hits = spelled_names(copy / "finetune_core" / "training" / "loop.py", run_folder_names(), copy)
    assert hits == ["finetune_core/training/loop.py:5 spells 'metrics.json'"]
