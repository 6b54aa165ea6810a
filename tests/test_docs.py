"""The docs name only what exists: every file path and every `module.function` written in
backticks in README.md and docs/*.md, and every relative link, resolves in this tree.

What counts as a reference (anything else in backticks is prose, a value or a command):
- a path: backticked text with a `/`, no space, URL or placeholder (`<`, `*`, `{`, `$`),
  whose first part is a file or folder of the repository, of `mattermost_connector/`, or
  `.`/`..` (others are channel names, deployments, other repositories' files, folders made
  at run time); it must exist relative to the repository, to `mattermost_connector/`, or
  to the document. A trailing `:line` or `#anchor` is ignored.
- a dotted name: backticked `a.b` or `dir/a.b` (identifiers, an optional trailing `()`)
  whose first part is a module or package of the project (a file or folder directly under
  mattermost_connector/, or flows, tasks, deployments, mattermost_connector,
  mattermost_prefect) or a class defined at the top level of one; it must import and
  resolve attribute by attribute. flows/, tasks/ and deployments/ are mattermost_prefect's,
  read without importing them (their source's top-level definitions and class members), so
  that the test needs no Prefect.
- a Markdown link `[text](target)` to a relative target: the file must exist.
"""

from __future__ import annotations

import ast
import importlib
import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOMAIN = ROOT / "mattermost_connector"
PREFECT_FOLDERS = ("flows", "tasks", "deployments")
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXTENSIONS = re.compile(r"\.(py|md|yml|yaml|toml|json|sample|txt|png|sh|cfg|ini|lock|sql)$")
DOTTED = re.compile(r"^[A-Za-z_][\w]*(?:/[A-Za-z_]\w*)*(?:\.[A-Za-z_]\w*)+(?:\(\))?$")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@cache
def top_names() -> frozenset[str]:
    """The first parts a dotted reference to the project starts with."""
    here = {p.stem for p in DOMAIN.glob("*.py") if p.stem != "__init__"}
    here |= {p.name for p in DOMAIN.iterdir() if (p / "__init__.py").exists()}
    return frozenset(here | {*PREFECT_FOLDERS, "mattermost_connector", "mattermost_prefect"})


@cache
def tree_names() -> frozenset[str]:
    """What a path into this tree starts with."""
    names = {p.name for p in ROOT.iterdir() if not p.name.startswith(".")}
    return frozenset(names | {p.name for p in DOMAIN.iterdir()} | {".", ".."})


@cache
def project_classes() -> dict[str, list[str]]:
    """Class name -> the modules defining it at their top level."""
    found: dict[str, list[str]] = {}
    for folder in (DOMAIN, *(ROOT / f for f in PREFECT_FOLDERS), ROOT / "mattermost_prefect"):
        for path in folder.rglob("*.py"):
            module = module_of(path)
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                if isinstance(node, ast.ClassDef):
                    found.setdefault(node.name, []).append(module)
    return found


def module_of(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in PREFECT_FOLDERS:
        parts.insert(0, "mattermost_prefect")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def full_module(name: str) -> str:
    first = name.split(".")[0]
    if first in ("mattermost_connector", "mattermost_prefect"):
        return name
    if first in PREFECT_FOLDERS:
        return f"mattermost_prefect.{name}"
    return f"mattermost_connector.{name}"


def references(text: str) -> tuple[list[str], list[str]]:
    """(paths, dotted names) written in backticks in `text`."""
    paths, names = [], []
    for code in CODE.findall(text):
        code = code.strip()
        if any(c in code for c in " <*{$") or "://" in code:
            continue
        if DOTTED.match(code) and not EXTENSIONS.search(code):
            first = code.split("/")[0].split(".")[0]
            if first in top_names() or first in project_classes():
                names.append(code.removesuffix("()"))
        elif "/" in code and code.split("/")[0] in tree_names():
            paths.append(re.sub(r"(:\d+(-\d+)?|#.*)$", "", code))
    return paths, names


def resolve(name: str) -> Any:
    """The object a dotted reference names; raises if any part is missing."""
    parts = name.replace("/", ".").split(".")
    if parts[0] in project_classes() and parts[0] not in top_names():
        errors = []
        for module in project_classes()[parts[0]]:
            try:
                if module.startswith("mattermost_prefect"):
                    return read_statically(module, parts)
                return attributes(importlib.import_module(module), parts)
            except AttributeError as error:
                errors.append(str(error))
        raise AttributeError("; ".join(errors))
    for cut in range(len(parts), 0, -1):
        module = full_module(".".join(parts[:cut]))
        if module.startswith("mattermost_prefect"):
            try:
                return read_statically(module, parts[cut:])
            except ModuleNotFoundError:
                continue
        try:
            found = importlib.import_module(module)
        except ModuleNotFoundError as error:
            if error.name and module.startswith(error.name):
                continue  # a shorter prefix may be the module
            raise
        return attributes(found, parts[cut:])
    raise ModuleNotFoundError(name)


def attributes(value: Any, parts: list[str]) -> Any:
    for part in parts:
        value = getattr(value, part)
    return value


def defined(tree: ast.Module | ast.ClassDef, name: str) -> ast.AST | None:
    """The top-level statement of `tree` that defines `name` (a def, class, assignment or
    import), if any."""
    for node in tree.body:
        if name in names_defined(node):
            return node
    return None


def names_defined(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return {t.id for t in targets if isinstance(t, ast.Name)}
    if isinstance(node, ast.Import | ast.ImportFrom):
        return {a.asname or a.name.split(".")[0] for a in node.names}
    return set()


def read_statically(module: str, parts: list[str]) -> None:
    """A mattermost_prefect module's attribute chain, from its source."""
    relative = module.removeprefix("mattermost_prefect.").split(".")
    base = ROOT.joinpath(*relative) if relative[0] in PREFECT_FOLDERS else None
    base = base or ROOT.joinpath("mattermost_prefect", *module.split(".")[1:])
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    if not path.exists():
        raise ModuleNotFoundError(module, name=module)
    node: ast.AST | None = ast.parse(path.read_text(encoding="utf-8"))
    for part in parts:
        if not isinstance(node, ast.Module | ast.ClassDef) or defined(node, part) is None:
            raise AttributeError(f"{module} defines no {'.'.join(parts)}")
        node = defined(node, part)


def path_exists(path: str, document: Path) -> bool:
    path = path.rstrip("/")
    return any((base / path).exists() for base in (ROOT, DOMAIN, document.parent))


@pytest.mark.parametrize("document", DOCS, ids=lambda p: p.name)
def test_every_path_and_name_in_backticks_exists(document: Path):
    paths, names = references(document.read_text(encoding="utf-8"))
    missing = [p for p in paths if not path_exists(p, document)]
    unresolved = []
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as error:
            unresolved.append(f"{name} ({error})")
    assert not missing and not unresolved, {"paths": missing, "names": unresolved}


@pytest.mark.parametrize("document", DOCS, ids=lambda p: p.name)
def test_every_relative_link_exists(document: Path):
    text = CODE.sub("", document.read_text(encoding="utf-8"))  # a link in code is an example
    targets = [t.split("#")[0] for t in LINK.findall(text)]
    relative = [t for t in targets if t and not re.match(r"^[a-z]+:", t)]
    assert [t for t in relative if not (document.parent / t).exists()] == []


def test_the_checks_catch_what_no_longer_exists(tmp_path: Path):
    """The rules are not vacuous: a renamed function, a moved module, a deleted file and a
    dead link are each caught."""
    text = (
        "`pipeline/run.run_channel` `stix.iter_bundles` `StateStore.record_delivery` "
        "`tasks/steps.prefect_steps` `docs/prefect.md`"
    )
    paths, names = references(text)
    assert names == [
        "pipeline/run.run_channel",
        "stix.iter_bundles",
        "StateStore.record_delivery",
        "tasks/steps.prefect_steps",
    ]
    assert paths == ["docs/prefect.md"] and path_exists(paths[0], DOCS[0])
    for name in names:
        resolve(name)
    for gone in ("pipeline/channel.ChannelPipeline", "stix.bundle_json", "StateStore.nope"):
        with pytest.raises((ImportError, AttributeError)):
            resolve(gone)
    assert references("`tasks/locks.acquire_channel`")[1] == ["tasks/locks.acquire_channel"]
    assert not path_exists("tasks/locks.py", DOCS[0])
    assert references("`settings.secrets` `config.yml` `sys.exit`") == ([], [])
    (tmp_path / "doc.md").write_text("[api](../shared/docs/mattermost-api.md)")
    assert LINK.findall((tmp_path / "doc.md").read_text()) == ["../shared/docs/mattermost-api.md"]
