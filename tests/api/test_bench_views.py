"""The benchmark-only baseline views (config.bench_views): absent unless BENCH_VIEWS=true,
and when mounted they answer 4xx to bad input like every other endpoint."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest
from django.apps import apps
from django.test import Client
from django.urls import clear_url_caches

import config.urls


@pytest.fixture
def bench_urls(settings: Any) -> Iterator[None]:
    settings.BENCH_VIEWS = True
    importlib.reload(config.urls)
    clear_url_caches()
    yield
    settings.BENCH_VIEWS = False
    importlib.reload(config.urls)
    clear_url_caches()


@pytest.mark.django_db
def test_bench_views_are_not_mounted_with_the_production_default(client: Client) -> None:
    assert client.post("/bench/floor/", {"prompt": "hello there"}, content_type="application/json").status_code == 404
    assert client.post("/bench/naive/", {"prompt": "hello there"}, content_type="application/json").status_code == 404


@pytest.mark.django_db
def test_floor_view_validates_and_writes_one_row_no_worker_will_run(
    bench_urls: None, tenant: Any, client: Client
) -> None:
    assert client.post("/bench/floor/", {"prompt": "hi"}, content_type="application/json").status_code == 400
    response = client.post("/bench/floor/", {"prompt": "hello there"}, content_type="application/json")
    assert response.status_code == 202
    row = apps.get_model("llm", "AITask").objects.get(pk=response.json()["id"])
    assert row.status == "cancelled"  # the pools and the sweeper never pick it up


@pytest.mark.django_db
def test_naive_view_answers_with_the_providers_text(bench_urls: None, client: Client) -> None:
    assert client.post("/bench/naive/", {}, content_type="application/json").status_code == 400
    response = client.post("/bench/naive/", {"prompt": "hello there"}, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["status"] == "done"
    assert response.json()["result"]
