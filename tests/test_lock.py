"""The dependency lock (requirements/*.txt, scripts/lock.py) and what installs from it.

The running interpreter's environment holds every locked package at exactly its locked
version; the lock agrees with pyproject.toml, and a pin changed without `make lock` is caught
offline; make, CI and the Dockerfile install the lock and nothing else; the image's Python is
the one requires-python names; hadolint passes on the Dockerfile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.version import Version

from scripts import lock

ROOT = Path(__file__).resolve().parent.parent


def _applies(pin: lock.Pin) -> bool:
    return pin.marker is None or Marker(pin.marker).evaluate()


def _installed() -> dict[str, str]:
    return {lock.canonical(dist.metadata["Name"]): dist.version for dist in metadata.distributions()}


def _locked(path: Path) -> dict[str, lock.Pin]:
    return lock.parse_pins((ROOT / path).read_text().splitlines())


# --- the environment is the lock ---------------------------------------------------------


def test_every_locked_package_is_installed_at_exactly_its_locked_version() -> None:
    installed = _installed()
    pins = [pin for pin in _locked(lock.DEV).values() if _applies(pin)]
    assert len(pins) > 50, "the lock holds the transitive dependencies too"
    wrong = {
        pin.name: (pin.version, installed.get(pin.name))
        for pin in pins
        if pin.name not in installed or Version(installed[pin.name]) != Version(pin.version)
    }
    assert wrong == {}, "locked vs installed; run `make venv`"


@pytest.mark.skipif(os.environ.get("CI") != "true", reason="a shared developer venv may hold other branches' packages")
def test_a_fresh_venv_holds_nothing_but_the_lock() -> None:
    """CI builds its venv from the lock in a fresh clone: nothing else may be in it (pip aside)."""
    extra = set(_installed()) - set(_locked(lock.DEV)) - {"pip"}
    assert extra == set()


def test_every_locked_pin_carries_a_sha256_hash() -> None:
    for path in (lock.RUNTIME, lock.DEV):
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (ROOT / path).read_text())
        pinned = [block for block in blocks if "==" in block.split("\n", 1)[0]]
        assert len(pinned) == len(_locked(path))
        assert all("--hash=sha256:" in block for block in pinned), path


# --- pyproject.toml and the lock agree ------------------------------------------------------


def test_the_committed_lock_matches_pyproject() -> None:
    assert lock.check(ROOT) == []


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    (tmp_path / "requirements").mkdir()
    for name in ("pyproject.toml", str(lock.RUNTIME), str(lock.DEV)):
        shutil.copy(ROOT / name, tmp_path / name)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_a_pin_changed_without_relocking_fails_the_check(repo_copy: Path) -> None:
    _edit(repo_copy / "pyproject.toml", '"Django==6.1.3"', '"Django==6.1.4"')
    problems = lock.check(repo_copy)
    assert "django: pyproject.toml pins 6.1.4, requirements/runtime.txt has 6.1.3" in problems
    assert "requirements/runtime.txt was not made from this pyproject.toml's dependencies" in problems
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts/lock.py"), "--check", "--root", str(repo_copy)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1
    assert "run `make lock`" in result.stderr


def test_a_dependency_added_without_relocking_fails_the_check(repo_copy: Path) -> None:
    _edit(repo_copy / "pyproject.toml", '"pytest==', '"leftpad-notlocked==1.0.0",\n    "pytest==')
    problems = lock.check(repo_copy)
    assert "leftpad-notlocked==1.0.0 is in pyproject.toml but not in requirements/dev.txt" in problems


def test_an_extra_or_python_change_fails_the_check_through_the_digest(repo_copy: Path) -> None:
    _edit(repo_copy / "pyproject.toml", '"celery[redis]==5.7.0"', '"celery[redis,sqs]==5.7.0"')
    assert lock.check(repo_copy) == [
        "requirements/runtime.txt was not made from this pyproject.toml's dependencies",
        "requirements/dev.txt was not made from this pyproject.toml's dependencies",
    ]


def test_tool_sections_do_not_touch_the_lock(repo_copy: Path) -> None:
    _edit(repo_copy / "pyproject.toml", "line-length = 120", "line-length = 100")
    assert lock.check(repo_copy) == []


def test_runtime_and_dev_locks_agree_on_every_shared_version(repo_copy: Path) -> None:
    _edit(repo_copy / lock.DEV, "\nsix==1.17.0 ", "\nsix==1.16.0 ")
    assert "six: requirements/runtime.txt has 1.17.0, requirements/dev.txt has 1.16.0" in lock.check(repo_copy)


# --- make, CI and the image install the lock and nothing else -------------------------------


def _make_dry_run(tmp_path: Path, *args: str) -> str:
    """`make -n` against a venv whose stamp is fresh: prints what would run, runs nothing."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    (venv / "bin/.installed").touch()
    result = subprocess.run(["make", "-n", f"VENV={venv}", *args], cwd=ROOT, capture_output=True, text=True, check=True)
    return result.stdout


def test_make_reinstalls_from_the_lock_when_the_lock_changes(tmp_path: Path) -> None:
    assert "pip install" not in _make_dry_run(tmp_path, "venv")
    for changed in (lock.RUNTIME, lock.DEV):
        commands = _make_dry_run(tmp_path, "-W", str(changed), "venv")
        install = [line for line in commands.splitlines() if "pip install" in line]
        assert len(install) == 1, commands
        assert re.search(r"--require-hashes --no-deps --only-binary :all: -r requirements/dev\.txt$", install[0])


def test_make_test_checks_the_lock_and_lints_the_dockerfile(tmp_path: Path) -> None:
    commands = _make_dry_run(tmp_path, "test")
    assert "scripts/lock.py --check" in commands
    assert "bin/hadolint Dockerfile" in commands
    assert re.search(r"^make test$", (ROOT / ".ci/run").read_text(), re.MULTILINE)


def _dockerfile_instructions() -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_image_installs_exactly_the_runtime_lock() -> None:
    instructions = _dockerfile_instructions()
    copies = [line for line in instructions if line.startswith("COPY requirements/")]
    assert copies == ["COPY requirements/runtime.txt /tmp/requirements.txt"]
    installs = [line for line in instructions if re.search(r"\bpip\b.*\binstall\b", line)]
    assert len(installs) == 1
    assert re.search(
        r"pip install --no-cache-dir --require-hashes --no-deps --only-binary :all: -r /tmp/requirements\.txt( |$)",
        installs[0],
    )
    assert not any("apt-get install" in line for line in instructions)


def test_the_image_python_is_the_requires_python_minor() -> None:
    requires = lock.Inputs.read(ROOT / "pyproject.toml").requires_python
    minor = lock.python_minor(requires)
    assert re.fullmatch(r">=\s*3\.13\s*,\s*<\s*3\.14", requires), "one minor: the image's and the lock's"
    instructions = _dockerfile_instructions()
    (image,) = (line.split("=", 1)[1] for line in instructions if line.startswith("ARG PYTHON_IMAGE="))
    match = re.fullmatch(r"python:(\d+\.\d+)[-.\w]*", image)
    assert match and match.group(1) == minor
    froms = [line for line in instructions if line.startswith("FROM ")]
    assert froms and all(line.startswith("FROM ${PYTHON_IMAGE} ") for line in froms)


def test_hadolint_passes_on_the_dockerfile() -> None:
    hadolint = Path(sysconfig.get_path("scripts")) / "hadolint"
    result = subprocess.run([str(hadolint), "Dockerfile"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
