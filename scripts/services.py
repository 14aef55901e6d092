"""Local service bootstrap for `make run` and `make test`. Nothing here runs in production.

``ensure [--env-file PATH]``: PostgreSQL and Redis must answer at DATABASE_URL /
REDIS_URL, and the database must exist (it is created when missing). When a server does
not answer, its URL points at this machine and the server binaries are installed, a
throw-away server is started under ``.local/`` (git-ignored; ``SWITCHYARD_LOCAL_DIR``
moves it), serving the URL itself when its port (and, for PostgreSQL, its unix socket) is
free, else on a free port. Otherwise it says exactly what to install, or to use
`docker compose up`. A URL that changed is printed and, with ``--env-file``, every URL to
use is written as a shell ``export`` line (scripts/run.sh sources them).

``stop``: stops the throw-away servers (their data stays under ``.local/``).
"""

# ruff: noqa: T201 - a command-line script talks to its user through print

from __future__ import annotations

import argparse
import getpass
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import redis

ROOT = Path(__file__).resolve().parent.parent
LOCAL = Path(os.environ.get("SWITCHYARD_LOCAL_DIR", ROOT / ".local")).resolve()
DEFAULT_DATABASE_URL = "postgres:///switchyard"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOCAL_HOSTS = {"", "localhost", "127.0.0.1", "::1"}
# libpq names the socket it tried: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed
SOCKET_IN_ERROR = re.compile(r'on socket "(?P<dir>/[^"]+)/\.s\.PGSQL\.(?P<port>\d+)"')
INSTALL_HINT = (
    "Install PostgreSQL 15 and Redis 7 (Debian/Ubuntu: apt-get install postgresql redis-server; "
    "macOS: brew install postgresql@15 redis), or run `docker compose up -d postgres redis` and set "
    "DATABASE_URL=postgres://switchyard:switchyard@127.0.0.1:5432/switchyard REDIS_URL=redis://127.0.0.1:6379/0"
)


class ServiceError(Exception):
    """A service cannot be reached or started; the message says what to do."""


# --- probes --------------------------------------------------------------------------


def _conninfo(url: str, dbname: str | None = None) -> str:
    parts = urlparse(url)
    fields = {
        "host": parts.hostname or os.environ.get("PGHOST", ""),
        "port": str(parts.port or ""),
        "user": parts.username or "",
        "password": parts.password or "",
        "dbname": dbname if dbname is not None else (parts.path.lstrip("/") or "switchyard"),
        "connect_timeout": "3",
    }
    return " ".join(f"{k}={v}" for k, v in fields.items() if v)


def postgres_error(url: str) -> str | None:
    """None when PostgreSQL answers at ``url`` (creating the database when missing)."""
    name = urlparse(url).path.lstrip("/") or "switchyard"
    try:
        with psycopg.connect(_conninfo(url), autocommit=True):
            return None
    except psycopg.OperationalError as exc:
        if f'database "{name}" does not exist' not in str(exc):
            return str(exc).strip().splitlines()[0]
    with psycopg.connect(_conninfo(url, dbname="postgres"), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # name comes from our own DATABASE_URL
    print(f"created database {name}")
    return None


def redis_error(url: str) -> str | None:
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        return str(exc)
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _port_for(url: str, default: int) -> int:
    """The URL's port when nothing listens on it, else a free one."""
    port = urlparse(url).port or default
    if _port_free(port):
        return port
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(argv: list[str], user: str | None = None) -> None:
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)  # noqa: S603 - our own argv
    if result.returncode:
        raise ServiceError(f"{shlex.join(argv)} failed: {(result.stderr or result.stdout).strip()[-800:]}")


# --- throw-away PostgreSQL -------------------------------------------------------------


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for bindir in [*candidates, *(str(Path(w).parent) for w in (shutil.which("initdb"),) if w)]:
        if (Path(bindir) / "initdb").exists() and (Path(bindir) / "pg_ctl").exists():
            return Path(bindir)
    return None


def _pg_os_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as the `postgres` user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError("PostgreSQL refuses to run as root and there is no `postgres` user") from None
    return "postgres"


def _writable_by(directory: str, user: str | None) -> bool:
    """Can the server's OS user create its socket in ``directory``? As root, the standard
    directory is created for the `postgres` user when missing (it normally comes with the
    server package and a boot-time tmpfiles rule)."""
    if user is None:
        return os.access(directory, os.W_OK)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o2775)
        shutil.chown(directory, user=user)
    return subprocess.run(["runuser", "-u", user, "--", "test", "-w", directory], check=False).returncode == 0  # noqa: S603,S607


def _with_database(url: str, name: str) -> str:
    parts = urlparse(url)
    return f"{parts.scheme}://{parts.netloc}/{name}"


def start_postgres(url: str, error: str) -> str:
    """Serve ``url`` itself when possible: the same unix socket (a URL without host, like
    the default, names libpq's socket in ``error``) or the same TCP port; else a free port.
    The role is the URL's user or this OS user, as libpq would connect."""
    bindir = _pg_bindir()
    if bindir is None:
        raise ServiceError("no PostgreSQL server is installed (initdb and pg_ctl not found)")
    home, os_user = LOCAL / "pg", _pg_os_user()
    data, server_file = home / "data", home / "url"
    parts, name = urlparse(url), urlparse(url).path.lstrip("/") or "switchyard"
    if server_file.exists() and postgres_error(local := _with_database(server_file.read_text().strip(), name)) is None:
        return local  # started by an earlier run and still up
    home.mkdir(parents=True, exist_ok=True)
    if os_user:
        shutil.chown(home, user=os_user)
        _run(["test", "-w", str(home)], user=os_user)  # every parent directory must be traversable
    if not (data / "PG_VERSION").exists():
        role = parts.username or getpass.getuser()
        sock = SOCKET_IN_ERROR.search(error) if not parts.hostname else None
        if sock and _port_free(int(sock["port"])) and _writable_by(sock["dir"], os_user):
            port, socket_dir, server = int(sock["port"]), sock["dir"], url
        else:
            port, socket_dir = _port_for(url, 5432), ""
            same = parts.hostname and port == (parts.port or 5432)
            server = url if same else f"postgres://{role}@127.0.0.1:{port}/{name}"
        initdb = [str(bindir / "initdb"), "-D", str(data), "-U", role, "--auth=trust", "-E", "UTF8", "--locale=C"]
        _run([*initdb, "--no-sync"], user=os_user)
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"\n# switchyard throw-away server\nlisten_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{socket_dir}'\nmax_connections = 200\n"
            )
        server_file.write_text(f"{server}\n")
    _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "postgres.log"), "-w", "start"], user=os_user)
    local = _with_database(server_file.read_text().strip(), name)
    problem = postgres_error(local)
    if problem:
        raise ServiceError(f"the throw-away PostgreSQL in {home} does not answer: {problem}")
    print(f"started a throw-away PostgreSQL ({bindir.parent.name}) in {home}")
    return local


def stop_postgres() -> None:
    data, bindir = LOCAL / "pg" / "data", _pg_bindir()
    if bindir and (data / "postmaster.pid").exists():
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], user=_pg_os_user())
        print(f"stopped the throw-away PostgreSQL in {data.parent}")


# --- throw-away Redis -------------------------------------------------------------------


def start_redis(url: str, _error: str) -> str:
    server = shutil.which("redis-server")
    if server is None:
        raise ServiceError("no Redis server is installed (redis-server not found)")
    home = LOCAL / "redis"
    home.mkdir(parents=True, exist_ok=True)
    port_file = home / "port"
    if not port_file.exists():
        port_file.write_text(f"{_port_for(url, 6379)}\n")
    port = int(port_file.read_text())
    local_url = f"redis://127.0.0.1:{port}{urlparse(url).path or '/0'}"
    if redis_error(local_url) is None:
        return local_url  # started by an earlier run and still up
    conf = home / "redis.conf"
    conf.write_text(
        f'bind 127.0.0.1\nport {port}\ndir "{home}"\ndaemonize yes\nappendonly yes\n'
        f'pidfile "{home / "redis.pid"}"\nlogfile "{home / "redis.log"}"\n'
    )
    _run([server, str(conf)])
    deadline = time.monotonic() + 10
    while redis_error(local_url) is not None:
        if time.monotonic() > deadline:
            raise ServiceError(f"the throw-away Redis in {home} does not answer (see {home / 'redis.log'})")
        time.sleep(0.1)
    print(f"started a throw-away Redis in {home}")
    return local_url


def stop_redis() -> None:
    pid_file = LOCAL / "redis" / "redis.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
            print(f"stopped the throw-away Redis in {pid_file.parent}")
        except ProcessLookupError:
            pid_file.unlink()


# --- commands ---------------------------------------------------------------------------


def _ensure(name: str, url: str, error: str | None, start: Callable[[str, str], str]) -> str:
    if error is None:
        return url
    where = f"{name} does not answer at {url} ({error})"
    if (urlparse(url).hostname or "") not in LOCAL_HOSTS:
        raise ServiceError(f"{where}; it is not on this machine, so nothing is started here")
    try:
        return start(url, error)
    except ServiceError as exc:
        raise ServiceError(f"{where}; {exc}") from None


def ensure(env_file: Path | None) -> int:
    database_url = os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
    asked = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    urls: dict[str, str] = {}
    problems: list[str] = []
    for var, name, url, probe, start in (
        ("DATABASE_URL", "PostgreSQL", database_url, postgres_error, start_postgres),
        ("REDIS_URL", "Redis", redis_url, redis_error, start_redis),
    ):
        try:
            urls[var] = _ensure(name, url, probe(url), start)
        except ServiceError as exc:
            problems.append(str(exc))
    if problems:
        for problem in problems:
            print(f"switchyard: {problem}", file=sys.stderr)
        print(f"switchyard: {INSTALL_HINT}", file=sys.stderr)
        return 1
    if urls["REDIS_URL"] != redis_url and os.environ.get("CELERY_BROKER_URL") == redis_url:
        urls["CELERY_BROKER_URL"] = urls["REDIS_URL"]  # the broker was the old REDIS_URL: move it too
    if env_file is not None:
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text("".join(f"export {var}={shlex.quote(url)}\n" for var, url in urls.items()))
    changed = {var: url for var, url in urls.items() if url != asked.get(var)}
    for var, url in changed.items():
        print(f"using {var}={url}")
    if changed and env_file is not None:
        print(f"other shells and commands pick these up with: . {env_file}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="services.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ensure_parser = sub.add_parser("ensure", help="make PostgreSQL and Redis answer (start throw-away ones if needed)")
    ensure_parser.add_argument("--env-file", type=Path, help="write the URLs to use as shell export lines")
    sub.add_parser("stop", help="stop the throw-away servers under .local/")
    args = parser.parse_args(argv[1:])
    if args.command == "stop":
        stop_redis()
        try:
            stop_postgres()
        except ServiceError as exc:
            print(f"switchyard: {exc}", file=sys.stderr)
            return 1
        return 0
    return ensure(args.env_file)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
