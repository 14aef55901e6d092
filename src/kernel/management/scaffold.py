"""Plans and writes a new bounded context (``manage.py startcontext``).

Text in, text out: this module reads and writes files under the repository root and
never imports a context (the kernel may not). Everything is planned in memory first, so
a refused name or an unexpected file shape leaves the tree untouched.
"""

from __future__ import annotations

import builtins
import importlib.util
import keyword
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kernel.management.context_template import (
    CONTEXT_FILES,
    CONTRACTS_FILE,
    PROTECTED_MODELS_CONTRACT,
    render,
)

# At most 24 characters keeps every generated line within ruff's 120 columns.
NAME_PATTERN = re.compile(r"^(?=.{2,24}$)[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")
SETTINGS_MARKER = "# startcontext: contexts above"
URLS_MARKER = "# startcontext: api routes above"
CONTEXTS_LINE = re.compile(r"^(# CONTEXTS:)((?: [a-z][a-z0-9_]*)+)(.*)$", re.MULTILINE)
# Names that would shadow a package of the project, of Django or of the layout.
RESERVED = frozenset(
    {
        "admin", "api", "auth", "config", "contenttypes", "contracts", "django", "drf_spectacular",
        "kernel", "management", "messages", "migrations", "rest_framework", "sessions", "site",
        "src", "static", "staticfiles", "templates", "test", "tests",
    }
)  # fmt: skip


class ScaffoldError(Exception):
    """The context cannot be created; nothing has been written."""


@dataclass
class Plan:
    """Files to create and files to rewrite (path → full new text)."""

    root: Path
    created: dict[Path, str] = field(default_factory=dict)
    updated: dict[Path, str] = field(default_factory=dict)

    def apply(self) -> None:
        for path, text in self.created.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("x", encoding="utf-8") as handle:  # "x": never overwrite
                handle.write(text)
        for path, text in self.updated.items():
            path.write_text(text, encoding="utf-8")


def validate_name(name: str, *, root: Path, app_labels: Iterable[str] = ()) -> None:
    """Refuse anything but a new, lowercase identifier that shadows nothing."""
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(
            f"{name!r} is not a valid context name: use 2-24 lowercase letters and digits, "
            "starting with a letter, words joined by single underscores"
        )
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise ScaffoldError(f"{name!r} is a Python keyword")
    if name in RESERVED or name in sys.stdlib_module_names or hasattr(builtins, name):
        raise ScaffoldError(f"{name!r} is reserved (Python, Django or Switchyard already uses that name)")
    if name in set(app_labels):
        raise ScaffoldError(f"{name!r} is already an installed application label")
    for path in (root / "src" / name, root / "contracts" / f"{name}.py"):
        if path.exists():
            raise ScaffoldError(f"{path} already exists")
    if importlib.util.find_spec(name) is not None:
        raise ScaffoldError(f"{name!r} is already importable (an installed package has that name)")


def plan_context(name: str, *, root: Path, app_labels: Iterable[str] = ()) -> Plan:
    validate_name(name, root=root, app_labels=app_labels)
    plan = Plan(root=root)
    for relative, template in CONTEXT_FILES.items():
        plan.created[root / "src" / name / relative] = render(template, name=name)
    plan.created[root / "contracts" / f"{name}.py"] = render(CONTRACTS_FILE, name=name)

    settings_path = root / "src" / "config" / "settings.py"
    settings_text = _read(settings_path)
    if re.search(rf"^\s*[\"']{name}[\"'],?\s*$", settings_text, re.MULTILINE):
        raise ScaffoldError(f"{settings_path}: {name!r} is already in INSTALLED_APPS")
    plan.updated[settings_path] = _insert_before_marker(settings_text, SETTINGS_MARKER, f'"{name}",', settings_path)

    urls_path = root / "src" / "config" / "urls.py"
    urls_text = _read(urls_path)
    route = f'path("{name}/", include("{name}.api.urls")),'
    if f'"{name}.api.urls"' in urls_text:
        raise ScaffoldError(f"{urls_path}: {name}.api.urls is already routed")
    plan.updated[urls_path] = _insert_before_marker(urls_text, URLS_MARKER, route, urls_path)

    ini_path = root / "importlinter.ini"
    plan.updated[ini_path] = add_context_to_importlinter(_read(ini_path), name=name, path=ini_path)
    return plan


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ScaffoldError(f"{path} not found: run startcontext from a Switchyard checkout") from exc


def _insert_before_marker(text: str, marker: str, line: str, path: Path) -> str:
    lines = text.splitlines(keepends=True)
    for index, existing in enumerate(lines):
        if existing.strip() == marker:
            indent = existing[: len(existing) - len(existing.lstrip())]
            lines.insert(index, f"{indent}{line}\n")
            return "".join(lines)
    raise ScaffoldError(f"{path}: marker line {marker!r} not found")


# -- importlinter.ini ------------------------------------------------------------------


def add_context_to_importlinter(text: str, *, name: str, path: Path) -> str:
    """Add ``name`` to every contract that lists all existing contexts, protect its models.

    Convention (kept by this function): the ``# CONTEXTS:`` comment names every context;
    a multi-line list that contains all of them (root_packages, the independence modules,
    the forbidden lists of kernel and contracts, the inner-layers containers) gets the new
    one appended; the top-level ``layers`` list gets it just below ``config`` (a new
    context starts at the top: it may use every other context's services, none uses it).
    """
    match = CONTEXTS_LINE.search(text)
    if match is None:
        raise ScaffoldError(f"{path}: the '# CONTEXTS: ...' comment line is missing")
    contexts = match.group(2).split()
    if name in contexts or f"[importlinter:contract:{name}-models]" in text:
        raise ScaffoldError(f"{path}: {name!r} is already declared")
    text = text[: match.end(2)] + f" {name}" + text[match.end(2) :]

    lines = text.splitlines(keepends=True)
    touched: set[str] = set()
    index = 0
    last_protected_end: int | None = None
    section = ""
    section_type = ""
    while index < len(lines):
        stripped = lines[index].strip()
        if stripped.startswith("["):
            if section_type == "protected":
                last_protected_end = index
            section, section_type = stripped, _section_type(lines, index)
            index += 1
            continue
        key_match = re.match(r"^([a-z_]+)\s*=\s*$", lines[index])
        if key_match is None:
            index += 1
            continue
        key = key_match.group(1)
        start = index + 1
        end = start
        while end < len(lines) and lines[end][:1] in {" ", "\t"} and lines[end].strip():
            end += 1
        items = [line.strip() for line in lines[start:end]]
        if set(contexts) <= set(items):
            indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
            if key == "layers":
                if "config" not in items:
                    raise ScaffoldError(f"{path}: {section} lists layers without 'config' on top")
                at = start + items.index("config") + 1
            else:
                at = end
            lines.insert(at, f"{indent}{name}\n")
            touched.add(key)
            end += 1
        index = end
    if section_type == "protected":
        last_protected_end = len(lines)

    missing = {"root_packages", "layers", "modules", "containers"} - touched
    if missing:
        raise ScaffoldError(f"{path}: no list naming every context under {', '.join(sorted(missing))}")
    block = render(PROTECTED_MODELS_CONTRACT, name=name)
    if last_protected_end is None:
        lines.append("\n" + block)
    else:
        at = last_protected_end
        while at > 0 and not lines[at - 1].strip():
            at -= 1
        lines.insert(at, "\n" + block)
    return "".join(lines)


def _section_type(lines: list[str], header: int) -> str:
    for line in lines[header + 1 :]:
        if line.strip().startswith("["):
            break
        found = re.match(r"^type\s*=\s*(\S+)", line)
        if found:
            return found.group(1)
    return ""
