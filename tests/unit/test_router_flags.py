"""`ranvier run --role router --public-url` must be an http(s) URL: a clear error, nothing run."""

from __future__ import annotations

import pytest

from ranvier.cli import main
from ranvier.commands.up import checked_public_url


@pytest.mark.parametrize("url", ["ftp://x", "ranvier-router", "http://"])
def test_a_bad_public_url_is_a_clear_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--role", "router", "--public-url", url, "--nats-url", "nats://127.0.0.1:1"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"--public-url {url!r} is not an http(s) URL" in err
    assert "Traceback" not in err


def test_a_public_url_loses_its_trailing_slash() -> None:
    assert checked_public_url("http://ranvier-router.ranvier-system.svc/") == (
        "http://ranvier-router.ranvier-system.svc"
    )
    assert checked_public_url("https://models.example.com/ml") == "https://models.example.com/ml"
