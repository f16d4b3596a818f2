"""A real browser for the console tests: Debian's Chromium driven by playwright's Python API.

No browser is downloaded: `.ci/run` installs Debian's `chromium` and playwright launches that
binary (`executable_path`). Screenshots are saved under the test's tmp dir and copied to
`RANVIER_TEST_ARTIFACTS` when it is set; each path is printed so that a person can look.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path(os.environ.get("RANVIER_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium; a clear failure when the binary is missing."""
    if not CHROMIUM.exists():
        raise AssertionError(
            f"{CHROMIUM} is missing: `apt-get install -y chromium` (as .ci/run does)"
        )
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save a full-page screenshot as `<folder>/<name>.png` (and in RANVIER_TEST_ARTIFACTS)."""
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    extra = os.environ.get("RANVIER_TEST_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(extra) / path.name)
    print(f"screenshot: {path}")  # for a person to look at
    return path
