"""The retrain example in a real browser: bad feedback, the Alert's plot, and the trace.

`ranvier up examples/02-retrain-on-feedback -d --until deployed` (1 s metric interval, `for`
2 s, as tests/e2e/test_retrain_on_feedback.py runs it), the console open on the Axon. Bad
feedback (the example's own `curl`) drives the accuracy below 0.90: the Alert's plot shows
values under its threshold line and the moment it fired, without a reload; model v2 appears;
and the retrain's trace reads feedback metric -> decision -> trainer -> model v2 ->
deploy run -> deployment.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.e2e import kit
from tests.e2e.browser import chromium, screenshot
from tests.e2e.test_retrain_on_feedback import FEEDBACK, NAME, prepare

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(400)]

WAIT = 150.0


def test_console_shows_the_alert_and_the_retrain_chain(tmp_path: Path) -> None:
    axon = prepare(tmp_path, "scrape")
    state = tmp_path / "state"
    up = kit.ranvier("up", str(axon), "-d", "--until", "deployed", "--timeout", "150", state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        console = (state / "api.url").read_text().strip()
        with chromium() as browser, httpx.Client(timeout=30.0) as http:
            page = browser.new_page(viewport={"width": 1200, "height": 1000})
            page.goto(f"{console}#/axons/default/{NAME}")
            endpoint = page.locator("#summary a.endpoint")
            expect(endpoint).to_be_visible(timeout=30_000)
            url = endpoint.get_attribute("href")
            assert url is not None
            page.evaluate("window.__sameDocument = true")
            alert = page.locator("section.alert[data-sensor='PostDeployment']")
            expect(alert.locator("code")).to_have_text("{{quickstart_accuracy}} < 0.90")

            deadline = time.monotonic() + WAIT
            fired = alert.locator("svg line.fired")
            while fired.count() == 0:  # bad feedback until the Alert fires (plot updates live)
                assert time.monotonic() < deadline, "the Alert never fired"
                sent = http.post(f"{url}send-feedback", json=FEEDBACK)
                assert sent.status_code == 200, sent.text
                page.wait_for_timeout(500)
            expect(alert.locator("svg line.threshold")).to_have_count(1)
            expect(alert.locator("svg circle.point").first).to_be_visible()
            values = alert.locator("svg circle.point title").all_text_contents()
            assert any(float(v.split()[0]) < 0.9 for v in values), values
            assert page.evaluate("window.__sameDocument") is True

            retrain = page.locator("li.run", has=page.locator("strong", has_text="PostDeployment"))
            expect(retrain).to_have_attribute("data-phase", "Succeeded", timeout=WAIT * 1000)
            deploys = page.locator("li.run", has=page.locator("strong", has_text="DeployOnTrained"))
            expect(deploys).to_have_count(2, timeout=WAIT * 1000)
            expect(deploys.nth(1)).to_have_attribute("data-phase", "Succeeded", timeout=WAIT * 1000)
            versions = page.locator("section.model[data-task='TrainModel'] tr.version-row")
            expect(versions).to_have_count(2, timeout=30_000)
            expect(page.locator("section.model svg circle.point")).to_have_count(2)
            screenshot(page, tmp_path, "console-retrain")

            retrain.get_by_role("link", name="trace").click()
            chain = page.locator("ol.trace > li")
            expect(chain.first).to_be_visible(timeout=30_000)
            classes = chain.evaluate_all("items => items.map(i => i.className)")
            assert classes[:2] in (["link-event", "link-metric"], ["link-metric", "link-decision"])
            expect(page.locator("li.link-metric")).to_contain_text("quickstart_accuracy")
            order = [
                "link-metric",
                "link-decision",
                "link-run",
                "link-task",
                "link-model",
                "link-event",
                "link-decision",
                "link-run",
                "link-task",
                "link-deployment",
            ]
            assert _subsequence(order, classes), classes
            expect(page.locator("li.link-task[data-kind='train']")).to_have_count(1)
            expect(page.locator("li.link-model")).to_contain_text("v2")
            expect(page.locator("li.link-deployment")).to_contain_text(url)
            screenshot(page, tmp_path, "console-trace")
    finally:
        down = kit.ranvier("down", state=state)
        assert down.returncode == 0, down.stdout + down.stderr


def _subsequence(wanted: list[str], found: list[str]) -> bool:
    items = iter(found)
    return all(any(w == f for f in items) for w in wanted)
