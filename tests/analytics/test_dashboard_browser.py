"""The dashboard in a real browser: Debian's headless Chromium, driven by Selenium,
against the live server. A member signs in with the session login form, the page
loads, every chart draws the seeded data, the console stays clean. A screenshot is
kept in tests/artifacts/ (git-ignored) for a person to look at."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model

from tests.analytics.test_summary import seed
from tests.support import ROOT

pytestmark = pytest.mark.slow

CHARTS = ("chart-cost", "chart-status", "chart-p95", "chart-budget", "chart-queues")
ARTIFACTS = ROOT / "tests" / "artifacts"

# Painted pixels of a canvas, and the sum of the chart's data (Chart.js keeps it).
CANVAS_STATE = """
const canvas = document.getElementById(arguments[0]);
const chart = Chart.getChart(canvas);
const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let painted = 0;
for (let i = 3; i < pixels.length; i += 4) { if (pixels[i] !== 0) painted++; }
const total = chart.data.datasets.flatMap((d) => d.data).reduce((a, b) => a + (Number(b) || 0), 0);
return {painted: painted, total: total, width: canvas.width, height: canvas.height};
"""


def _browser_paths() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    driver = shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    reason = "chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    unavailable = os.environ.get("SWITCHYARD_CHROMIUM_UNAVAILABLE")
    if os.environ.get("CI") and not unavailable:
        pytest.fail(f"CI must run the browser test: {reason}; .ci/run installs them")
    print(f"skipping the browser test: {unavailable or reason}")
    pytest.skip(unavailable or reason)


@pytest.fixture
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1200"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_renders_its_charts_in_chromium(
    transactional_db: None, live_server: Any, browser: Any, make_tenant: Callable[..., Any]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    tenant, other = make_tenant(org="Acme Analytics"), make_tenant()
    seed(uuid.UUID(tenant.organization_id), uuid.UUID(other.organization_id))
    user = get_user_model().objects.get(memberships__organization_id=tenant.organization_id)
    user.set_password("correct horse battery staple")
    user.save()
    for priority in ("low", "low", "high"):  # no worker runs: they wait in the queues (and reserve budget)
        response = tenant.client.post(
            "/api/v1/ai-tasks/", {"prompt": "Wait for me", "priority": priority}, format="json"
        )
        assert response.status_code == 202

    browser.get(f"{live_server.url}/dashboard/")  # not signed in: the login form
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located((By.ID, "sign-in")))
    browser.find_element(By.ID, "id_username").send_keys(user.email)
    browser.find_element(By.ID, "id_password").send_keys("correct horse battery staple")
    browser.find_element(By.ID, "sign-in").click()
    WebDriverWait(browser, 15).until(lambda d: d.execute_script("return document.body.dataset.charts") == "ready")

    assert browser.current_url == f"{live_server.url}/dashboard/"
    assert "Acme Analytics" in browser.title
    assert browser.find_element(By.ID, "tile-tasks").text == "7"
    for chart in CHARTS:
        state = browser.execute_script(CANVAS_STATE, chart)
        assert state["width"] > 0 and state["height"] > 0, (chart, state)
        assert state["painted"] > 500, (chart, state)  # the canvas is drawn on, not blank
        assert state["total"] > 0, (chart, state)  # and from the seeded data

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    browser.save_screenshot(str(shot))
    print(f"dashboard screenshot: {shot}")
    errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == [], errors
