"""Which credentials a command presents, and to whom: flags and `RANVIER_*` first, then the
state dir's, and those only to the server the state dir records; URLs carry none onward."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from events.bus import ConnectOptions
from events.errors import RanvierError
from executors.backends.local import task_environment
from ranvier.settings import (
    Credentials,
    Settings,
    is_loopback,
    read_credentials,
    server_credentials,
    split_url,
    write_credentials,
)

CREDENTIAL_ENV = (
    "RANVIER_NATS_URL",
    "RANVIER_STATE_DIR",
    "RANVIER_USER",
    "RANVIER_PASSWORD",
    "RANVIER_TOKEN",
    "RANVIER_CREDS_FILE",
    "RANVIER_NKEY_SEED",
)


@pytest.fixture(autouse=True)
def no_ranvier_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state dir as `ranvier up` leaves it: the server's URL and its token."""
    path = tmp_path / "state"
    server_credentials(path, Credentials(token=SecretStr("tok-en")))
    (path / "nats.url").write_text("nats://127.0.0.1:4567\n")
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_state_dirs_token_goes_to_the_server_it_records(state: Path) -> None:
    options = Settings.from_flags(state_dir=state).connect_options()
    assert (options.servers, options.token, options.user) == (
        ["nats://127.0.0.1:4567"],
        "tok-en",
        None,
    )
    same = Settings.from_flags(state_dir=state, nats_url="nats://127.0.0.1:4567")
    assert same.connect_options().token == "tok-en"


def test_the_state_dirs_token_is_never_sent_elsewhere(state: Path) -> None:
    other = Settings.from_flags(state_dir=state, nats_url="nats://10.0.0.9:4222")
    assert other.connect_options().token is None
    assert other.task_url() == "nats://10.0.0.9:4222"
    (state / "nats.url").unlink()
    assert Settings.from_flags(state_dir=state).connect_options().token is None


def test_flags_and_environment_win_over_the_state_dir(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Settings.from_flags(state_dir=state, token="mine").connect_options().token == "mine"
    monkeypatch.setenv("RANVIER_USER", "ana")
    monkeypatch.setenv("RANVIER_PASSWORD", "pw")
    options = Settings.from_flags(state_dir=state).connect_options()
    assert (options.user, options.password, options.token) == ("ana", "pw", None)
    monkeypatch.delenv("RANVIER_USER")
    seed = state.parent / "seed.nk"
    nkey = Settings.from_flags(state_dir=state, nkey_seed=seed).connect_options()
    assert (nkey.token, nkey.nkey_seed) == (None, seed)


def test_credentials_in_a_url_are_taken_out_of_it(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANVIER_NATS_URL", "nats://t%40k@127.0.0.1:1,nats://127.0.0.1:2")
    settings = Settings.from_flags(state_dir=state)
    assert settings.resolve_url() == ("nats://127.0.0.1:1,nats://127.0.0.1:2", "settings")
    options = settings.connect_options()
    assert (options.servers, options.token) == (["nats://127.0.0.1:1", "nats://127.0.0.1:2"], "t@k")
    assert "t@k" not in options.url
    assert "t%40k" not in repr(settings)
    user = Settings.from_flags(nats_url="tls://ana:p%3Aw@h:4222").connect_options()
    assert (user.servers, user.user, user.password) == (["tls://h:4222"], "ana", "p:w")


@pytest.mark.parametrize(
    "credentials",
    [
        Credentials(token=SecretStr("a/b@c:d%e f")),
        Credentials(user="an@a", password=SecretStr("p:w/@")),
    ],
)
def test_a_task_url_carries_the_credentials_back_intact(credentials: Credentials) -> None:
    url = credentials.in_url("nats://127.0.0.1:1,nats://127.0.0.1:2")
    bare, found = split_url(url)
    assert bare == "nats://127.0.0.1:1,nats://127.0.0.1:2"
    assert found == credentials


def test_a_task_gets_one_variable_and_servers_none(state: Path) -> None:
    url = Settings.from_flags(state_dir=state).task_url()
    assert url == "nats://tok-en@127.0.0.1:4567"
    inherited = {"RANVIER_NATS_URL": url, "RANVIER_TOKEN": "x", "RANVIER_CACHE": "/c", "HOME": "/h"}
    assert task_environment(inherited) == {"RANVIER_CACHE": "/c", "HOME": "/h"}
    plain = {"RANVIER_NATS_URL": "nats://127.0.0.1:4567"}
    assert task_environment(plain) == plain


def test_a_new_state_dir_is_private_with_a_random_token(tmp_path: Path) -> None:
    state = tmp_path / "new"
    with capture_logs() as logs:
        first = server_credentials(state)
    assert logs == []  # nothing to report on a first start
    assert first.token is not None
    assert len(first.token.get_secret_value()) >= 40
    assert (mode(state), mode(state / "credentials.json")) == (0o700, 0o600)
    assert server_credentials(state) == first == read_credentials(state)
    assert server_credentials(tmp_path / "other") != first


def test_an_older_state_dir_is_tightened_in_one_log_line(tmp_path: Path) -> None:
    state = tmp_path / "old"
    (state / "nats" / "jetstream").mkdir(parents=True)
    os.chmod(state, 0o755)
    with capture_logs() as logs:
        server_credentials(state)
        server_credentials(state)
    assert [(e["event"], e["mode"], e["credentials"]) for e in logs] == [
        ("state_dir.secured", "755 -> 700", "generated")
    ]
    assert mode(state) == 0o700
    assert read_credentials(state) is not None


def test_given_credentials_are_kept_for_the_commands_that_follow(tmp_path: Path) -> None:
    given = Credentials(user="ana", password=SecretStr("pw"))
    assert server_credentials(tmp_path / "s", given) == given
    assert json.loads((tmp_path / "s" / "credentials.json").read_text()) == {
        "user": "ana",
        "password": "pw",
    }


def test_a_damaged_credential_file_is_a_clear_error(tmp_path: Path) -> None:
    write_credentials(tmp_path, Credentials(token=SecretStr("t")))
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(RanvierError, match=r"credentials.json: not a ranvier credentials file"):
        read_credentials(tmp_path)


def test_loopback_addresses() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.0.1.1", "localhost", "::1"]))
    assert not any(map(is_loopback, ["0.0.0.0", "10.1.2.3", "::", "example.org"]))


def test_connect_options_never_show_credentials_in_messages() -> None:
    options = ConnectOptions(servers=["nats://tok@127.0.0.1:1", "tls://a:b@h:2", "h:3"])
    assert options.url == "nats://127.0.0.1:1,tls://h:2,h:3"
