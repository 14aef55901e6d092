"""The web role serves the admin's static files when started the way production starts it.

With DEBUG off the static storage is WhiteNoise's manifest storage: every ``{% static %}``
needs an entry in ``staticfiles.json``, written by ``collectstatic``. The image collects at
build time; the Procfile path (``bin/switchyard web``, which ``make run`` runs under honcho)
never did, and ``/admin/`` answered 500 ("Missing staticfiles manifest entry").
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.test_entrypoint import (
    Role,
    clean_env,
    flush_redis,
    fresh_database_url,
    http_status,
    isolated_redis_urls,
    stop_group,
    wait_until,
)
from tests.support import free_port

__all__ = ["fresh_database_url"]  # a fixture of this module too
STYLESHEET = re.compile(r'<link rel="stylesheet" href="(/static/admin/css/[^"]+\.css)"')


@pytest.fixture
def production_web(tmp_path: Path, fresh_database_url: str) -> Iterator[Callable[..., Role]]:
    cache_url, broker_url = isolated_redis_urls()
    started: list[Role] = []

    def start(**extra: str) -> Role:
        # Production settings (config.settings, DEBUG unset = off), as the Procfile runs it.
        env = clean_env(
            DJANGO_SETTINGS_MODULE="config.settings",
            SECRET_KEY=f"static-files-test-{uuid.uuid4().hex}{uuid.uuid4().hex}",
            WEBHOOK_SIGNING_SECRET=uuid.uuid4().hex * 2,
            METRICS_TOKEN=uuid.uuid4().hex * 2,  # required with DEBUG off once the metrics token lands
            ALLOWED_HOSTS="127.0.0.1",
            DATABASE_URL=fresh_database_url,
            REDIS_URL=cache_url,
            CELERY_BROKER_URL=broker_url,
            CACHE_KEY_PREFIX=f"static{uuid.uuid4().hex[:6]}",
            PORT=str(free_port()),
            WEB_WORKERS="1",
            STATIC_ROOT=str(tmp_path / "static"),  # empty: nothing collected beforehand
            **extra,
        )
        started.append(Role("web", tmp_path, env))
        return started[-1]

    yield start
    for role in started:
        if role.running():
            stop_group(role.process)
    flush_redis(broker_url)


@pytest.mark.slow
def test_web_role_with_debug_off_serves_the_admin_login_with_its_css(
    production_web: Callable[..., Role], tmp_path: Path
) -> None:
    web = production_web()
    base = f"http://127.0.0.1:{web.env['PORT']}"
    wait_until(lambda: http_status(f"{base}/healthz") == 200, timeout=90, what="web", log=web.log_path)
    login = httpx.get(f"{base}/admin/login/", timeout=10)
    assert login.status_code == 200, web.log()[-3000:]
    stylesheets = STYLESHEET.findall(login.text)
    assert stylesheets, login.text
    for href in stylesheets:
        css = httpx.get(f"{base}{href}", timeout=10)
        assert css.status_code == 200, href
        assert css.headers["content-type"].startswith("text/css")
        assert css.content
    # Hashed names, served as immutable: the manifest storage is in use, not a fallback.
    assert re.search(r"\.[0-9a-f]{12}\.css$", stylesheets[0]), stylesheets
    assert (tmp_path / "static" / "staticfiles.json").is_file()
