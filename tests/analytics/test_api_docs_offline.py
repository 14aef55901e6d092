"""/api/docs/ works offline: Swagger UI's files come from the image
(drf-spectacular-sidecar's static files), never from a CDN."""

from __future__ import annotations

import re
from typing import Any

from django.contrib.staticfiles import finders


def test_swagger_ui_is_served_from_our_static_files(anon_client: Any, settings: Any) -> None:
    html = anon_client.get("/api/docs/").content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "an asset is loaded from another host"
    assert "cdn.jsdelivr" not in html and "unpkg" not in html
    prefix = "/" + settings.STATIC_URL.lstrip("/")
    for asset in assets:
        assert asset.startswith(prefix)
        assert finders.find(asset.removeprefix(prefix)), asset
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
