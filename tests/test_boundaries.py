"""The import contracts of importlinter.ini really hold the boundaries of SPEC §1.

Each test copies the source tree to a temporary directory, adds one import there and
runs ``lint-imports`` on the copy: the working tree is never touched, so files other
people are editing cannot make these tests flaky, and a contract that silently stopped
matching anything (a renamed package, a typo in a module list) shows up as a test that
expected BROKEN and got KEPT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
# What lint-imports reads; manage.py and pyproject.toml let the same copy run Django and ruff.
TREE = ("src", "contracts", "importlinter.ini", "manage.py", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".mypy_cache", ".ruff_cache", ".import_linter_cache")

LAYERS = "Top-level layers: config > contexts > kernel > contracts"
SERVICES_ONLY = "Contexts reach each other only through <context>.services"
CONTRACTS_PURE = "contracts is pure Pydantic: no Django, DRF, Celery or src package"
KERNEL_NO_CONTEXT = "kernel imports no context and no wiring"
BILLING_MODELS = "Only billing may import billing.models"
INNER_LAYERS = "Inside a context: api/tasks/admin/management > services > selectors > models"


def copy_repo(dest: Path) -> Path:
    """Copy what lint-imports, manage.py and ruff need into ``dest`` and return it."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in TREE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=IGNORED)
        else:
            shutil.copy2(source, dest / name)
    return dest


def subprocess_env(repo: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") or k == "PYTEST_XDIST_WORKER"}
    env.update(PYTHONPATH=f"{repo / 'src'}:{repo}", DJANGO_SETTINGS_MODULE="config.settings_test", **extra)
    return env


def lint_imports(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", "importlinter.ini", "--no-cache", "--no-logo"],
        cwd=repo,
        env=subprocess_env(repo),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def contract_lines(output: str) -> dict[str, str]:
    """``{contract name: "KEPT" | "BROKEN"}`` from lint-imports' summary."""
    result = {}
    for line in output.splitlines():
        for verdict in ("KEPT", "BROKEN"):
            if line.endswith(f" {verdict}") or f" {verdict} (" in line:
                result[line.split(f" {verdict}")[0].strip()] = verdict
    return result


def add_import(repo: Path, dotted: str, source: str) -> None:
    """Append ``source`` to module ``dotted`` of the copy, creating the module if needed."""
    base = repo if dotted.split(".")[0] == "contracts" else repo / "src"
    path = base.joinpath(*dotted.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    assert path.parent.joinpath("__init__.py").exists(), f"{path.parent} is not a package"
    existing = path.read_text() if path.exists() else '"""Boundary probe."""\n'
    path.write_text(f"{existing}\n{source}\n")


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("clean") / "repo")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return copy_repo(tmp_path / "repo")


def test_clean_tree_keeps_every_contract(clean_copy: Path) -> None:
    result = lint_imports(clean_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = contract_lines(result.stdout)
    for name in (LAYERS, SERVICES_ONLY, CONTRACTS_PURE, KERNEL_NO_CONTEXT, BILLING_MODELS, INNER_LAYERS):
        assert verdicts.get(name) == "KEPT", (name, result.stdout)
    assert "BROKEN" not in verdicts.values()


@pytest.mark.parametrize(
    ("module", "source", "broken"),
    [
        pytest.param(
            "llm.boundary_probe", "from billing import models as _m", BILLING_MODELS, id="llm-imports-billing-models"
        ),
        pytest.param(
            "kernel.boundary_probe", "from users import services as _s", KERNEL_NO_CONTEXT, id="kernel-imports-users"
        ),
        pytest.param("contracts.boundary_probe", "import django as _d", CONTRACTS_PURE, id="contracts-imports-django"),
        pytest.param(
            "users.api.boundary_probe", "from billing import services as _s", LAYERS, id="users-imports-billing"
        ),
        pytest.param(
            "llm.boundary_probe", "from billing.api import urls as _u", SERVICES_ONLY, id="llm-imports-billing-api"
        ),
        pytest.param("users.services", "from users.api import views as _v", INNER_LAYERS, id="services-import-api"),
        pytest.param(
            "llm.boundary_probe",
            "def later() -> None:\n    from billing import models  # noqa: F401",
            BILLING_MODELS,
            id="import-inside-function-counts",
        ),
    ],
)
def test_forbidden_import_breaks_its_contract(repo: Path, module: str, source: str, broken: str) -> None:
    add_import(repo, module, source)
    result = lint_imports(repo)
    assert result.returncode != 0, result.stdout
    assert contract_lines(result.stdout).get(broken) == "BROKEN", result.stdout


def test_context_above_may_call_a_lower_context_through_services(repo: Path) -> None:
    add_import(repo, "llm.api.boundary_probe", "from billing import services as _s")
    result = lint_imports(repo)
    assert result.returncode == 0, result.stdout + result.stderr
