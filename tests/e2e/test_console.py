"""The console in a real browser, on a pipeline that `ranvier up` runs as a user runs it.

Quickstart: `ranvier up -d` prints the console's URL (also in `<state-dir>/api.url`); the
console lists the Axon, its page shows the runs finishing without a reload (a marker set in
the page survives while the content changes), model v1 with its metrics, and the endpoint.
The page's controls are reachable with the keyboard and labelled.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.browser import chromium, screenshot
from tests.e2e.kit import REPO, ranvier

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

AXON = REPO / "examples" / "01-quickstart" / "axon.yaml"
WAIT_MS = 150_000


def test_console_follows_the_quickstart_live(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ranvier("up", str(AXON), "-d", state=state)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        url = (state / "api.url").read_text().strip()
        assert f"console: {url}" in up.stdout
        opened = ranvier("open", "--print", state=state)
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.strip() == url
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            row = page.locator("table.axons tr[data-axon='quickstart']")
            expect(row).to_be_visible(timeout=30_000)
            screenshot(page, tmp_path, "console-axons")

            row.get_by_role("link", name="quickstart", exact=True).click()
            expect(page.get_by_role("heading", name="Axon default/quickstart")).to_be_visible()
            page.evaluate("window.__sameDocument = true")
            runs = page.locator("li.run")
            deploy = page.locator("li.run", has=page.locator("strong", has_text="DeployOnTrained"))
            expect(deploy).to_have_attribute("data-phase", "Succeeded", timeout=WAIT_MS)
            expect(runs).to_have_count(2)
            assert page.evaluate("window.__sameDocument") is True  # updated live, no reload
            train = page.locator("li.run", has=page.locator("strong", has_text="TrainOnStart"))
            expect(train).to_have_attribute("data-phase", "Succeeded")
            expect(train.locator("li.task-run")).to_have_count(2)
            expect(train.locator("li.task-run[data-task='TrainModel']")).to_contain_text("v1")

            version = page.locator("section.model[data-task='TrainModel'] tr.version-row")
            expect(version).to_have_count(1)
            expect(version).to_have_attribute("data-version", "1")
            expect(page.locator("section.model th", has_text="loss")).to_be_visible()
            expect(page.locator("section.model svg.plot")).to_have_count(1)
            endpoint = page.locator("#summary a.endpoint")
            expect(endpoint).to_have_text(re.compile(r"/quickstart/$"))
            expect(page.locator(".deployment .share")).to_contain_text("100")
            screenshot(page, tmp_path, "console-quickstart")

            # a task run's log, opened with the keyboard
            log_button = train.locator("li.task-run[data-task='TrainModel'] button")
            log_button.focus()
            page.keyboard.press("Enter")
            expect(log_button).to_have_attribute("aria-expanded", "true")
            expect(train.locator("pre.log")).to_be_visible()

            # every form control has a label
            _labelled(page)

            page.get_by_role("link", name="Events").click()
            expect(page.locator("table.events tbody tr").first).to_be_visible(timeout=30_000)
            page.get_by_label("Type").select_option("lifecycle")
            page.get_by_role("button", name="Filter").click()
            page.wait_for_url(re.compile(r"#/events\?type=lifecycle$"))
            others = page.locator("table.events tbody tr:not([data-type='ranvier.lifecycle'])")
            expect(others).to_have_count(0)
            expect(page.locator("table.events tbody tr").first).to_be_visible()
            page.locator("table.events tbody tr a", has_text="why?").first.click()
            expect(page.get_by_role("heading", name=re.compile("Why"))).to_be_visible()
            screenshot(page, tmp_path, "console-explain")
    finally:
        down = ranvier("down", state=state)
        assert down.returncode == 0, down.stdout + down.stderr
    assert not (state / "api.url").exists()
    closed = ranvier("open", "--print", state=state)
    assert closed.returncode == 1
    assert "no console is running" in closed.stderr
    assert json.loads((state / "up.json").read_text())["console"] == url


def _labelled(page: Page) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
              .map(e => e.outerHTML)"""
    )
    assert unlabelled == []
