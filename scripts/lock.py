"""The dependency lock: requirements/runtime.txt and requirements/dev.txt, made from pyproject.toml.

``python scripts/lock.py`` (``make lock``) resolves pyproject.toml with uv into two files of
exact pins with sha256 hashes, every transitive dependency included: ``runtime.txt`` (what the
image runs) and ``dev.txt`` (runtime plus the dev extra, constrained to the same versions; what
``make`` installs). Existing pins are kept unless pyproject.toml needs another version
(``--upgrade`` or ``--upgrade-package NAME`` moves them). Each file carries a digest of the
pyproject.toml fields it was made from.

``python scripts/lock.py --check`` (``make lock-check``, part of ``make test``) needs no network
and no third-party package: it fails when pyproject.toml's dependencies, dev extra or
requires-python changed since the lock was made (the digest), when a direct pin's version differs
from the lock's, or when runtime.txt and dev.txt disagree on a version.

Nothing here installs anything; the Makefile, .ci/run and the Dockerfile install the files with
``pip install --require-hashes --no-deps``.
"""

# ruff: noqa: T201 - a command-line script talks to its user through print

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNTIME = Path("requirements/runtime.txt")
DEV = Path("requirements/dev.txt")
DIGEST_PREFIX = "# pyproject-sha256: "
DIGEST_NOTE = " (project.dependencies, the dev extra, requires-python; `make lock-check` compares it)"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;\\]+)\s*(?:;\s*([^\\#]+?))?\s*(?:\\|#|$)")


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str | None


def canonical(name: str) -> str:
    """PEP 503 normalised name: `Django`, `django_redis` and `django.redis` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(lines: list[str]) -> dict[str, Pin]:
    """`name[extras]==version ; marker` lines (a requirements file or pyproject's list) by canonical name."""
    pins: dict[str, Pin] = {}
    for line in lines:
        match = _PIN.match(line.strip())
        if match:
            name = canonical(match.group(1))
            pins[name] = Pin(name, match.group(3), match.group(4))
    return pins


@dataclass(frozen=True)
class Inputs:
    """The fields of pyproject.toml a lock is made from; nothing else in the file affects it."""

    requires_python: str
    dependencies: list[str]
    dev: list[str]

    @classmethod
    def read(cls, pyproject: Path) -> Inputs:
        project = tomllib.loads(pyproject.read_text())["project"]
        return cls(
            requires_python=project.get("requires-python", ""),
            dependencies=sorted(project.get("dependencies", [])),
            dev=sorted(project.get("optional-dependencies", {}).get("dev", [])),
        )

    def digest(self) -> str:
        fields = {"requires-python": self.requires_python, "dependencies": self.dependencies, "dev": self.dev}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def lock_digest(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith(DIGEST_PREFIX):
            return line.removeprefix(DIGEST_PREFIX).split()[0]
    return None


def python_minor(requires_python: str) -> str:
    """The lowest `X.Y` that `>=X.Y,<...` admits: the version the lock is resolved for."""
    match = re.search(r">=\s*(\d+\.\d+)", requires_python)
    if not match:
        raise SystemExit(f"lock: requires-python {requires_python!r} has no '>=X.Y' lower bound")
    return match.group(1)


def check(root: Path = ROOT) -> list[str]:
    """Every way pyproject.toml and the lock files disagree, as one sentence each ([] when they agree)."""
    inputs = Inputs.read(root / "pyproject.toml")
    digest = inputs.digest()
    problems: list[str] = []
    locks: dict[Path, dict[str, Pin]] = {}
    for path in (RUNTIME, DEV):
        if not (root / path).exists():
            problems.append(f"{path} is missing")
            continue
        text = (root / path).read_text()
        locks[path] = parse_pins(text.splitlines())
        if lock_digest(text) != digest:
            problems.append(f"{path} was not made from this pyproject.toml's dependencies")
    wanted = {RUNTIME: inputs.dependencies, DEV: [*inputs.dependencies, *inputs.dev]}
    for path, pins in locks.items():
        for name, pin in parse_pins(wanted[path]).items():
            locked = pins.get(name)
            if locked is None:
                problems.append(f"{name}=={pin.version} is in pyproject.toml but not in {path}")
            elif locked.version != pin.version:
                problems.append(f"{name}: pyproject.toml pins {pin.version}, {path} has {locked.version}")
    if RUNTIME in locks and DEV in locks:
        for name, pin in locks[RUNTIME].items():
            dev = locks[DEV].get(name)
            if dev is None or dev.version != pin.version:
                problems.append(f"{name}: {RUNTIME} has {pin.version}, {DEV} has {dev.version if dev else 'nothing'}")
    return problems


def _uv() -> str:
    for candidate in (Path(sys.executable).parent / "uv", ROOT / ".venv/bin/uv"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("uv")
    if found is None:
        raise SystemExit("lock: uv not found; `make venv` installs it (it is in the dev extra)")
    return found


def compile_locks(root: Path = ROOT, extra_args: list[str] | None = None) -> None:
    """Re-resolve both files with uv (network: the package index), then stamp the digest into each."""
    inputs = Inputs.read(root / "pyproject.toml")
    minor = python_minor(inputs.requires_python)
    common = [
        _uv(), "pip", "compile", "pyproject.toml", "--universal", "--python-version", minor,
        "--generate-hashes", "--quiet", "--custom-compile-command", "make lock", *(extra_args or []),
    ]  # fmt: skip
    (root / RUNTIME).parent.mkdir(exist_ok=True)
    subprocess.run([*common, "-o", str(RUNTIME)], cwd=root, check=True)  # noqa: S603 - our own argv
    subprocess.run([*common, "--extra", "dev", "-c", str(RUNTIME), "-o", str(DEV)], cwd=root, check=True)  # noqa: S603
    stamp = DIGEST_PREFIX + inputs.digest() + DIGEST_NOTE
    for path in (RUNTIME, DEV):
        lines = [line for line in (root / path).read_text().splitlines() if not line.startswith(DIGEST_PREFIX)]
        # After uv's header comment, before the first pin.
        at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        lines.insert(at, stamp)
        (root / path).write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="compare pyproject.toml with the lock, offline")
    parser.add_argument("--upgrade", action="store_true", help="move every pin to the newest allowed version")
    parser.add_argument("--upgrade-package", action="append", default=[], metavar="NAME")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (default: this one)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.root)
        for problem in problems:
            print(f"lock: {problem}", file=sys.stderr)
        if problems:
            print("lock: run `make lock` and commit requirements/", file=sys.stderr)
            return 1
        print(f"lock: {RUNTIME} and {DEV} match pyproject.toml")
        return 0
    extra = ["--upgrade"] if args.upgrade else []
    for name in args.upgrade_package:
        extra += ["--upgrade-package", name]
    compile_locks(args.root, extra_args=extra)
    print(f"lock: wrote {RUNTIME} and {DEV}; commit them with pyproject.toml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
