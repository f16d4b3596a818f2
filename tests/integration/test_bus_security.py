"""Connecting with nkey seeds, creds-less nkey users and TLS with a private CA."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nkeys
import pytest

from events.bus import AuthError, Bus, ConnectError, ConnectOptions
from events.model import MetricData
from tests.conftest import MakeServer

pytestmark = pytest.mark.integration


def new_user_seed(path: Path) -> str:
    """Write a fresh nkey user seed to `path`; returns the user's public key."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    path.write_bytes(seed + b"\n")
    return str(nkeys.from_seed(bytearray(seed)).public_key.decode())


async def test_nkey_seed_right_and_wrong(make_nats_server: MakeServer, tmp_path: Path) -> None:
    allowed = new_user_seed(tmp_path / "user.nk")
    new_user_seed(tmp_path / "stranger.nk")
    srv = make_nats_server(nkey_users=[allowed])
    async with Bus.connect(ConnectOptions(servers=[srv.url], nkey_seed=tmp_path / "user.nk")) as b:
        ack = await b.publish(MetricData(axon="a", name="m", value=1).to_event(source="t"))
        assert ack.seq == 1
    stranger = ConnectOptions(servers=[srv.url], nkey_seed=tmp_path / "stranger.nk")
    with pytest.raises(AuthError, match=r"authorization failed .* with the credentials given"):
        async with Bus.connect(stranger):
            pass


async def test_a_missing_seed_file_is_a_clear_error(tmp_path: Path) -> None:
    options = ConnectOptions(servers=["nats://127.0.0.1:9"], nkey_seed=tmp_path / "none.nk")
    with pytest.raises(ConnectError, match=r"nkey seed .*none\.nk does not exist"):
        async with Bus.connect(options):
            pass


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    """A private CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed: cannot make test certificates")
    d = tmp_path / "tls"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=d, check=True, capture_output=True, timeout=30)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=ranvier-test-ca")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "san.ext")  # fmt: skip
    return {"ca": d / "ca.pem", "cert": d / "server.pem", "key": d / "server.key"}


async def test_tls_with_the_right_ca(
    make_nats_server: MakeServer, tls_files: dict[str, Path]
) -> None:
    srv = make_nats_server(tls_cert=tls_files["cert"], tls_key=tls_files["key"])
    assert srv.url.startswith("tls://")
    options = ConnectOptions(servers=[srv.url], tls_ca_file=tls_files["ca"])
    async with Bus.connect(options) as bus:
        ack = await bus.publish(MetricData(axon="a", name="m", value=1).to_event(source="t"))
        assert ack.seq == 1
    with pytest.raises(ConnectError, match=f"TLS with the NATS server at {srv.url} failed") as err:
        async with Bus.connect(ConnectOptions(servers=[srv.url])):  # system CAs: not trusted
            pass
    assert "--tls-ca" in str(err.value)


async def test_a_bad_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    options = ConnectOptions(servers=["nats://127.0.0.1:9"], tls_ca_file=bogus)
    with pytest.raises(ConnectError, match=r"cannot use .*ca\.pem as a TLS CA bundle"):
        async with Bus.connect(options):
            pass
