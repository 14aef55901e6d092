"""Static files without a sync middleware in the chain: under ASGI one sync-only
middleware makes Django run every request in a thread, so an open SSE stream held a
thread of the stream role for as long as it lasted (issue 9, the SSE fan-out bench)."""

from __future__ import annotations

from pathlib import Path

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory
from django.utils.module_loading import import_string

from kernel.middleware import StaticFilesMiddleware


def test_every_middleware_is_async_capable() -> None:
    """Failed before: whitenoise.middleware.WhiteNoiseMiddleware is sync-only."""
    sync_only = [path for path in settings.MIDDLEWARE if not getattr(import_string(path), "async_capable", False)]
    assert sync_only == []


def _static_root(tmp_path: Path, settings) -> None:
    (tmp_path / "app.css").write_text("body { color: teal; }")
    settings.STATIC_ROOT = str(tmp_path)
    settings.WHITENOISE_AUTOREFRESH = False


def test_under_asgi_a_static_file_is_served_and_anything_else_awaits_the_view(tmp_path: Path, settings) -> None:
    _static_root(tmp_path, settings)
    seen: list[str] = []

    async def view(request: HttpRequest) -> HttpResponse:
        seen.append(request.path)
        return HttpResponse("from the view")

    middleware = StaticFilesMiddleware(view)
    assert iscoroutinefunction(middleware)
    factory = RequestFactory()
    static = async_to_sync(middleware)(factory.get("/static/app.css"))
    assert static.status_code == 200
    assert b"".join(static.streaming_content) == b"body { color: teal; }"
    other = async_to_sync(middleware)(factory.get("/api/v1/ai-tasks/"))
    assert other.content == b"from the view"
    assert seen == ["/api/v1/ai-tasks/"]


def test_under_wsgi_it_is_whitenoise_itself(tmp_path: Path, settings) -> None:
    _static_root(tmp_path, settings)
    middleware = StaticFilesMiddleware(lambda request: HttpResponse("from the view"))
    assert not iscoroutinefunction(middleware)
    response = middleware(RequestFactory().get("/static/app.css"))
    assert response.status_code == 200
    assert middleware(RequestFactory().get("/other/")).content == b"from the view"
