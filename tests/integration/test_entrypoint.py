"""bin/switchyard, the one entrypoint of every role (SPEC §2), tested outside Docker.

The command line of each role is asserted with SWITCHYARD_PRINT_ONLY=1 (fast). The
slow tests start each role through the entrypoint as a real process, from a directory
outside the repository, against its own PostgreSQL database and Redis databases, and
stop it again with SIGTERM. The deployment files (Procfile, docker-compose.yml,
Dockerfile) are checked to call only roles the entrypoint knows.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlparse

import httpx
import psycopg
import pytest
import redis
import yaml
from django.conf import settings

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "bin" / "switchyard"
ROLES = ("web", "stream", "worker-priority", "worker-default", "worker-low", "beat", "flower", "migrate")


# --- helpers shared with test_make_run ----------------------------------------------------


def isolated_redis_urls() -> tuple[str, str]:
    """Cache and broker databases no other test process uses, so the workers started here
    never take tasks queued by the pipeline tests (settings_test uses 15..8 and 7..0
    from the top; these start at 11 and 3 and are flushed afterwards)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    base = settings.REDIS_URL.rsplit("/", 1)[0]
    return f"{base}/{11 - worker % 3}", f"{base}/{3 - worker % 3}"


def flush_redis(*urls: str) -> None:
    for url in urls:
        redis.Redis.from_url(url).flushdb()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a fresh login shell (no settings inherited from the test
    process, whose settings_test seeds os.environ), plus ``extra``."""
    kept = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL", "TERM")
    env = {k: v for k, v in os.environ.items() if k in kept}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def database_url(name: str) -> str:
    """DATABASE_URL for database ``name`` on the test suite's PostgreSQL server."""
    server = urlparse(os.environ.get("DATABASE_URL", "postgres:///switchyard"))
    return f"{server.scheme}://{server.netloc}/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def fresh_database_url() -> Iterator[str]:
    """An empty database of its own on the test PostgreSQL server, dropped afterwards."""
    name = f"switchyard_it_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(database_url("postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield database_url(name)
    drop_database(name)


def wait_until(predicate: Callable[[], object], *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    raise AssertionError(f"{what} not reached within {timeout}s\n{tail}")


def http_status(url: str, **kwargs: object) -> int | None:
    try:
        return httpx.get(url, timeout=3, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.TransportError:
        return None


def stop_group(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """Signal the process group and wait; SIGKILL it when it does not stop in time."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
        raise


# --- command lines (SWITCHYARD_PRINT_ONLY=1) ----------------------------------------------


def entrypoint(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), *args],
        cwd="/",
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def printed(role: str, *args: str, **env: str) -> str:
    result = entrypoint(role, *args, SWITCHYARD_PRINT_ONLY="1", **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def default_web_workers() -> int:
    return min(2 * len(os.sched_getaffinity(0)) + 1, 8)


def test_web_runs_gunicorn_gthread_on_port_with_recycling_and_access_log() -> None:
    line = printed("web", PORT="9123")
    shm = " --worker-tmp-dir /dev/shm" if Path("/dev/shm").is_dir() else ""
    assert line == (
        "gunicorn config.wsgi:application --bind 0.0.0.0:9123 --worker-class gthread "
        f"--workers {default_web_workers()} --threads 4 --timeout 30 --graceful-timeout 25 --keep-alive 5 "
        "--max-requests 2000 --max-requests-jitter 200 --access-logfile - --error-logfile - --no-control-socket" + shm
    )


def test_web_takes_workers_and_threads_from_env_and_defaults_to_port_8000() -> None:
    line = printed("web", WEB_WORKERS="3", WEB_THREADS="8")
    assert "--bind 0.0.0.0:8000 " in line
    assert "--workers 3 --threads 8 " in line


def test_stream_runs_uvicorn_asgi_with_proxy_headers_and_graceful_shutdown() -> None:
    assert printed("stream", PORT="9124") == (
        "uvicorn config.asgi:application --host 0.0.0.0 --port 9124 --proxy-headers "
        "--timeout-graceful-shutdown 10 --timeout-keep-alive 5 --lifespan off --no-server-header"
    )


@pytest.mark.parametrize(
    ("queue", "variable", "concurrency", "nice"),
    [
        ("priority", "WORKER_PRIORITY_CONCURRENCY", 100, 5),
        ("default", "WORKER_DEFAULT_CONCURRENCY", 300, 10),
        ("low", "WORKER_LOW_CONCURRENCY", 50, 15),
    ],
)
def test_each_worker_consumes_only_its_own_queue_on_a_threads_pool(
    queue: str, variable: str, concurrency: int, nice: int
) -> None:
    """Niced in the order of their queues by default; WORKER_<QUEUE>_NICE over WORKER_NICE."""
    assert printed(f"worker-{queue}") == (
        f"nice -n {nice} celery -A config worker -Q {queue} -n {queue}@%h -P threads --concurrency {concurrency} "
        "--without-gossip --without-mingle --loglevel INFO"
    )
    assert "--concurrency 7 " in printed(f"worker-{queue}", WORKER_CONCURRENCY="7")
    assert "--concurrency 9 " in printed(f"worker-{queue}", **{variable: "9", "WORKER_CONCURRENCY": "7"})
    assert " -P prefork " in printed(f"worker-{queue}", WORKER_POOL="prefork")
    assert entrypoint(f"worker-{queue}", WORKER_POOL="gevent").returncode == 2
    assert printed(f"worker-{queue}", WORKER_NICE="0").startswith("celery -A config worker ")
    assert printed(f"worker-{queue}", WORKER_NICE="19").startswith("nice -n 19 celery ")
    own = f"WORKER_{queue.upper()}_NICE"
    assert printed(f"worker-{queue}", **{own: "3", "WORKER_NICE": "19"}).startswith("nice -n 3 celery ")
    assert printed(f"worker-{queue}", **{own: "0", "WORKER_NICE": "19"}).startswith("celery -A config worker ")
    for bad in ("-5", "20", "high"):
        assert entrypoint(f"worker-{queue}", WORKER_NICE=bad).returncode == 2
        assert entrypoint(f"worker-{queue}", **{own: bad}).returncode == 2


def test_beat_keeps_its_schedule_at_a_writable_path() -> None:
    assert printed("beat") == "celery -A config beat --schedule /tmp/celerybeat-schedule --loglevel INFO"
    line = printed("beat", CELERY_BEAT_SCHEDULE_FILENAME="/var/tmp/beat")
    assert "--schedule /var/tmp/beat " in line


def test_flower_runs_on_port_and_keeps_the_password_off_the_command_line() -> None:
    line = printed("flower", PORT="5555", FLOWER_BASIC_AUTH="ops:s3cret")
    assert line == "celery -A config flower --port=5555 --address=127.0.0.1"
    line = printed("flower", PORT="5555", FLOWER_BASIC_AUTH="ops:s3cret,dev:an0ther", FLOWER_ADDRESS="0.0.0.0")
    assert line == "celery -A config flower --port=5555 --address=0.0.0.0"


def test_flower_refuses_to_start_without_basic_auth() -> None:
    for env in ({}, {"FLOWER_BASIC_AUTH": ""}, {"FLOWER_BASIC_AUTH": "ops"}, {"FLOWER_BASIC_AUTH": "ops:"}):
        result = entrypoint("flower", **env)
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert "FLOWER_BASIC_AUTH" in result.stderr


@pytest.mark.parametrize("auth", ["admin:change-me", "ops:s3cret,admin:change-me"])
def test_flower_refuses_the_demo_password(auth: str) -> None:
    result = entrypoint("flower", FLOWER_BASIC_AUTH=auth)
    assert result.returncode == 2
    assert "demo password" in result.stderr
    assert "change-me" not in result.stderr


def test_migrate_and_manage_run_manage_py() -> None:
    assert printed("migrate") == "python manage.py migrate --noinput"
    assert printed("manage", "create_api_key", "a@b.c", "--org", "Demo Org") == (
        "python manage.py create_api_key a@b.c --org 'Demo Org'"
    )


@pytest.mark.parametrize("args", [("bogus",), ()])
def test_unknown_or_missing_role_prints_usage_and_exits_2(args: tuple[str, ...]) -> None:
    result = entrypoint(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: bin/switchyard ROLE" in result.stderr
    assert all(role in result.stderr for role in ROLES)


def test_invalid_numbers_fail_with_one_line() -> None:
    for role, env in (
        ("web", {"PORT": "80a"}),
        ("web", {"WEB_WORKERS": "0"}),
        ("worker-low", {"WORKER_CONCURRENCY": "x"}),
    ):
        result = entrypoint(role, SWITCHYARD_PRINT_ONLY="1", **env)
        assert result.returncode == 2
        assert result.stderr.count("\n") == 1


def test_works_from_any_directory_and_through_a_symlink(tmp_path: Path) -> None:
    link = tmp_path / "switchyard"
    link.symlink_to(ENTRYPOINT)
    result = subprocess.run(
        [str(link), "migrate"],
        cwd=tmp_path,
        env=clean_env(SWITCHYARD_PRINT_ONLY="1"),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "python manage.py migrate --noinput"


# --- the deployment files use the entrypoint's roles -------------------------------------------


def test_procfile_runs_every_role_through_the_entrypoint() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    procfile = dict(line.split(": ", 1) for line in lines)
    assert procfile == {role: f"bin/switchyard {role}" for role in ROLES}


def test_compose_runs_every_role_from_one_image_in_dependency_order() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    app = {name: svc for name, svc in services.items() if svc.get("build")}
    assert {svc["command"] for svc in app.values()} == set(ROLES)
    assert {svc["image"] for svc in app.values()} == {"switchyard:local"}
    assert "--appendonly" in services["redis"]["command"]
    assert services["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    assert all("healthcheck" in services[name] for name in ("postgres", "pgbouncer", "redis"))
    migrate = app.pop("migrate")
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert urlparse(migrate["environment"]["DATABASE_URL"]).hostname == "postgres"
    for name, svc in app.items():
        env = svc["environment"]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert svc["depends_on"]["pgbouncer"]["condition"] == "service_healthy", name
        assert urlparse(env["DATABASE_URL"]).hostname == "pgbouncer", name
        assert env["DATABASE_POOLED"] == "true", name
        assert "healthcheck" not in svc, f"{name} keeps the image's role-aware HEALTHCHECK"
    flower = app["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # no default
    assert flower["ports"] == ["127.0.0.1:5555:5555"]  # published on the host's loopback only
    # No usable demo secrets: compose refuses to start until each is set.
    env = services["web"]["environment"]
    for name in ("SECRET_KEY", "WEBHOOK_SIGNING_SECRETS", "METRICS_TOKEN"):
        assert env[name].startswith(f"${{{name}:?"), name


def test_dockerfile_runs_the_entrypoint_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["bin/switchyard"]' in dockerfile
    assert 'CMD ["web"]' in dockerfile
    assert re.search(r"^USER (?!root|0)\S+", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*bin/switchyard\", \"healthcheck", dockerfile, re.MULTILINE)
    assert "collectstatic" in dockerfile
    assert len(re.findall(r"^FROM ", dockerfile, re.MULTILINE)) >= 2


# --- real processes -------------------------------------------------------------------


class Role:
    """One role started through bin/switchyard from outside the repository."""

    def __init__(self, role: str, workdir: Path, env: dict[str, str]) -> None:
        self.log_path = workdir / f"{role}.log"
        self.env = env
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(ENTRYPOINT), role],
                cwd=workdir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def running(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def start_role(tmp_path: Path, fresh_database_url: str) -> Iterator[Callable[..., Role]]:
    cache_url, broker_url = isolated_redis_urls()
    started: list[Role] = []

    def start(role: str, **extra: str) -> Role:
        env = clean_env(
            DJANGO_SETTINGS_MODULE="config.settings_test",
            DATABASE_URL=fresh_database_url,
            REDIS_URL=cache_url,
            CELERY_BROKER_URL=broker_url,
            CACHE_KEY_PREFIX=f"it{uuid.uuid4().hex[:6]}",
            LOG_LEVEL="INFO",
            PORT=str(free_port()),
            SWITCHYARD_ROLE_FILE=str(tmp_path / f"{role}.role"),
            CELERY_BEAT_SCHEDULE_FILENAME=str(tmp_path / "celerybeat-schedule"),
            **extra,
        )
        started.append(Role(role, tmp_path, env))
        return started[-1]

    yield start
    for role in started:
        if role.running():
            stop_group(role.process)
    flush_redis(broker_url)


def test_the_image_build_step_sets_every_setting_collectstatic_needs(tmp_path: Path) -> None:
    """The Dockerfile collects static files with DEBUG off: the settings it must pass grow
    with the production checks (a missing one breaks `docker build`)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    step = re.search(r"^RUN ((?:\w+=\S+\s+(?:\\\s+)?)+)bin/switchyard manage collectstatic", dockerfile, re.MULTILINE)
    assert step, "the collectstatic step"
    values = dict(re.findall(r"(\w+)=(\S+)", step.group(1)))
    env = clean_env(DJANGO_SETTINGS_MODULE="config.settings", STATIC_ROOT=str(tmp_path / "static"), **values)
    result = subprocess.run(
        [str(ENTRYPOINT), "manage", "collectstatic", "--noinput", "--verbosity", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "static" / "admin").is_dir()


def healthcheck(role: Role) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ENTRYPOINT), "healthcheck"], env=role.env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.mark.slow
def test_migrate_applies_migrations_and_exits_0(start_role: Callable[..., Role], fresh_database_url: str) -> None:
    role = start_role("migrate")
    assert role.process.wait(timeout=120) == 0, role.log()
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute("SELECT count(*) FROM django_migrations").fetchone()
    assert row is not None
    assert row[0] > 0


@pytest.mark.slow
def test_web_serves_health_readiness_and_metrics_and_stops_on_sigterm(
    start_role: Callable[..., Role], tmp_path: Path
) -> None:
    metrics = tmp_path / "prometheus"
    # Only a name under the allowed domain: the container healthcheck must still pass.
    web = start_role("web", WEB_WORKERS="2", ALLOWED_HOSTS=".switchyard.example", PROMETHEUS_MULTIPROC_DIR=str(metrics))
    base = f"http://127.0.0.1:{web.env['PORT']}"
    host = {"Host": "api.switchyard.example"}
    wait_until(lambda: http_status(f"{base}/healthz", headers=host) == 200, timeout=60, what="web", log=web.log_path)
    assert http_status(f"{base}/readyz", headers=host) == 200, web.log()
    assert http_status(f"{base}/metrics", headers=host) == 401  # the public role: only with the token
    scrape = {**host, "Authorization": f"Bearer {web.env.get('METRICS_TOKEN') or settings.METRICS_TOKEN}"}
    assert http_status(f"{base}/metrics", headers=scrape) == 200
    assert list(metrics.glob("*.db")), "gunicorn workers write metrics to PROMETHEUS_MULTIPROC_DIR"
    assert healthcheck(web).returncode == 0
    assert '"GET /readyz HTTP/1.1" 200' in web.log(), "access log goes to stdout"
    stop_group(web.process)
    assert web.process.returncode == 0, web.log()


@pytest.mark.slow
def test_stream_serves_health_and_readiness_over_asgi(start_role: Callable[..., Role]) -> None:
    stream = start_role("stream")
    base = f"http://127.0.0.1:{stream.env['PORT']}"
    wait_until(lambda: http_status(f"{base}/healthz") == 200, timeout=60, what="stream /healthz", log=stream.log_path)
    assert http_status(f"{base}/readyz") == 200, stream.log()
    assert healthcheck(stream).returncode == 0
    stop_group(stream.process)
    assert "Finished server process" in stream.log()


@pytest.mark.slow
def test_worker_low_answers_ping_under_its_queue_name(start_role: Callable[..., Role]) -> None:
    worker = start_role("worker-low", WORKER_CONCURRENCY="1")
    wait_until(lambda: "ready." in worker.log() or not worker.running(), timeout=60, what="worker ready")
    assert worker.running(), worker.log()
    node = f"low@{socket.gethostname()}"
    ping = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "config", "inspect", "ping", "-d", node, "--timeout", "5"],
        cwd=ROOT,
        env={**worker.env, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "pong" in ping.stdout
    assert healthcheck(worker).returncode == 0
    assert ".> low " in worker.log()
    assert ".> priority " not in worker.log()
    stop_group(worker.process)


@pytest.mark.slow
def test_beat_starts_and_stays_up(start_role: Callable[..., Role], tmp_path: Path) -> None:
    beat = start_role("beat")
    wait_until(lambda: "beat: Starting" in beat.log() or not beat.running(), timeout=60, what="beat start")
    time.sleep(3)
    assert beat.running(), beat.log()
    assert list(tmp_path.glob("celerybeat-schedule*")), "the schedule is kept at CELERY_BEAT_SCHEDULE_FILENAME"
    stop_group(beat.process)


@pytest.mark.slow
def test_flower_requires_basic_auth_from_the_environment(start_role: Callable[..., Role]) -> None:
    flower = start_role("flower", FLOWER_BASIC_AUTH="ops:s3cret-pass")
    base = f"http://127.0.0.1:{flower.env['PORT']}"
    wait_until(lambda: http_status(f"{base}/healthcheck") == 200, timeout=60, what="flower up", log=flower.log_path)
    assert http_status(f"{base}/") == 401
    assert http_status(f"{base}/", auth=("ops", "s3cret-pass")) == 200
    assert http_status(f"{base}/", auth=("ops", "wrong")) == 401
    assert b"s3cret-pass" not in Path(f"/proc/{flower.process.pid}/cmdline").read_bytes()
    assert healthcheck(flower).returncode == 0
    stop_group(flower.process)
