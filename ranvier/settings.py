"""ranvier's settings: one place where flags, `RANVIER_*` variables and the state dir meet.

Every command that connects builds a `Settings` from its flags (only the ones given), so the
order of precedence is the same everywhere: flag, then environment variable (`RANVIER_NATS_URL`,
`RANVIER_USER`, ...), then the `nats.url` file that `ranvier up` / `ranvier server` write in the
state dir, then nats-server's default address.

The state dir is private: 0700, and the credentials of the server it records are kept apart
from its URL in `credentials.json` (0600), a random token made on the first start. A command
uses them only when it gave no credentials of its own and talks to the server the state dir
records, so they are never sent anywhere else. A URL may carry credentials
(`nats://TOKEN@host:port`, as tasks get it in `RANVIER_NATS_URL`); they are taken out of the
URL before it is used, so the URLs that are logged or written down never hold one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import stat
import urllib.parse
from pathlib import Path
from typing import Any, Final, TypedDict

import structlog
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.bus import ConnectOptions, StreamLimits
from events.errors import RanvierError
from events.server import write_private

log = structlog.get_logger(__name__)

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
URL_FILE: Final = "nats.url"
STORE_DIR: Final = "nats"
CREDENTIALS_FILE: Final = "credentials.json"
PRIVATE_DIR: Final = 0o700
TOKEN_BYTES: Final = 32
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class ServerAuth(TypedDict):
    """`EmbeddedServer`'s and `ConnectOptions`' credential arguments."""

    token: str | None
    user: str | None
    password: str | None


class Credentials(BaseModel):
    """What a client presents to the server a state dir records: a token, or a user and its
    password (what `ranvier server --user/--password` was started with)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    token: SecretStr | None = None
    user: str | None = None
    password: SecretStr | None = None

    @classmethod
    def generate(cls) -> Credentials:
        """A new random token (256 bits, URL-safe, so it can ride in a URL's user part)."""
        return cls(token=SecretStr(secrets.token_urlsafe(TOKEN_BYTES)))

    @property
    def empty(self) -> bool:
        """True when there is nothing to present."""
        return self.token is None and self.user is None

    def server_kwargs(self) -> ServerAuth:
        """`EmbeddedServer`'s (and `ConnectOptions`') `token` / `user` / `password`."""
        return {
            "token": _plain(self.token),
            "user": self.user,
            "password": _plain(self.password) if self.user is not None else None,
        }

    def client_update(self) -> dict[str, Any]:
        """A `ConnectOptions` update presenting exactly these credentials."""
        return {**self.server_kwargs(), "creds_file": None, "nkey_seed": None}

    def in_url(self, url: str) -> str:
        """`url` (each of a comma-separated list) with these credentials in its user part."""
        if self.token is not None:
            userinfo = urllib.parse.quote(self.token.get_secret_value(), safe="")
        elif self.user is not None:
            userinfo = urllib.parse.quote(self.user, safe="")
            userinfo += ":" + urllib.parse.quote(_plain(self.password) or "", safe="")
        else:
            return url
        return ",".join(
            urllib.parse.urlsplit(u)._replace(netloc=f"{userinfo}@{_host_port(u)}").geturl()
            for u in _split(url)
        )


def _plain(secret: SecretStr | None) -> str | None:
    return secret.get_secret_value() if secret is not None else None


def _split(url: str) -> list[str]:
    return [u.strip() for u in url.split(",") if u.strip()]


def _host_port(url: str) -> str:
    """The `host:port` of a URL, without any user part."""
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def split_url(url: str) -> tuple[str, Credentials]:
    """`url` without the credentials in its user part, and those credentials
    (`nats://TOKEN@h:p` is a token, `nats://USER:PASS@h:p` a user; the first one found)."""
    found = Credentials()
    bare = []
    for one in _split(url):
        parts = urllib.parse.urlsplit(one)
        if parts.username is not None and found.empty:
            name = urllib.parse.unquote(parts.username)
            if parts.password is None:
                found = Credentials(token=SecretStr(name))
            else:
                password = SecretStr(urllib.parse.unquote(parts.password))
                found = Credentials(user=name, password=password)
        bare.append(parts._replace(netloc=_host_port(one)).geturl() if parts.username else one)
    return ",".join(bare), found


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (`localhost`, 127.0.0.0/8, `::1`)."""
    if host in LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secure_state_dir(state_dir: Path) -> int | None:
    """Create the state dir private (0700), or make an existing one private; returns its old
    mode when it had to be tightened (a state dir from an older ranvier is 0755)."""
    try:
        state_dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        mode = stat.S_IMODE(state_dir.stat().st_mode)
        if mode == PRIVATE_DIR:
            return None
        os.chmod(state_dir, PRIVATE_DIR)
    except OSError as exc:
        raise RanvierError(
            f"cannot make the state dir {state_dir} private (0700): {exc.strerror}",
            hint="use a --state-dir of your own (RANVIER_STATE_DIR)",
        ) from None
    return mode


def read_credentials(state_dir: Path) -> Credentials | None:
    """The credentials kept in the state dir, or None when it has none."""
    path = state_dir / CREDENTIALS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RanvierError(f"cannot read {path}: {exc.strerror}") from None
    try:
        found = Credentials.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        raise RanvierError(
            f"{path}: not a ranvier credentials file",
            hint="delete it (a new token is made on the next `ranvier up` or `ranvier server`)",
        ) from None
    return None if found.empty else found


def write_credentials(state_dir: Path, credentials: Credentials) -> None:
    """Keep `credentials` in the state dir (0600, in the 0700 dir)."""
    doc = {
        "token": _plain(credentials.token),
        "user": credentials.user,
        "password": _plain(credentials.password),
    }
    text = json.dumps({k: v for k, v in doc.items() if v is not None}) + "\n"
    write_private(state_dir / CREDENTIALS_FILE, text)


def server_credentials(state_dir: Path, given: Credentials | None = None) -> Credentials:
    """The credentials an embedded server on this state dir starts with: `given` (flags or
    `RANVIER_*`) if any, else the state dir's, else a new token. Whatever is used is kept in
    the state dir, so every command that finds the server there can connect. A state dir made
    before credentials existed (0755, none kept) is tightened, and that said in one log line.
    """
    existed = state_dir.is_dir()
    old_mode = secure_state_dir(state_dir)
    kept = read_credentials(state_dir)
    chosen = given if given is not None and not given.empty else kept or Credentials.generate()
    if chosen != kept:
        write_credentials(state_dir, chosen)
    older = kept is None and (state_dir / STORE_DIR).is_dir()  # a store, yet no credentials
    if existed and (old_mode is not None or older):
        log.warning(
            "state_dir.secured",
            path=str(state_dir),
            mode=f"{old_mode or PRIVATE_DIR:o} -> {PRIVATE_DIR:o}",
            credentials="generated" if given is None or given.empty else "given",
        )
    return chosen


class Settings(BaseSettings):
    """Configuration from flags and `RANVIER_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RANVIER_", extra="ignore", frozen=True)

    nats_url: str | None = Field(
        None,
        repr=False,  # it may carry a token (nats://TOKEN@host:port)
        description="NATS URL(s), comma-separated; credentials may ride in the user part.",
    )
    state_dir: Path = Field(Path(".ranvier"), description="Where ranvier keeps local state.")
    user: str | None = Field(None, description="NATS user (with password).")
    password: SecretStr | None = Field(None, description="NATS password.")
    token: SecretStr | None = Field(None, description="NATS token.")
    creds_file: Path | None = Field(None, description="NATS .creds file (JWT + seed).")
    nkey_seed: Path | None = Field(None, description="File with an nkey seed.")
    tls_ca_file: Path | None = Field(None, description="CA bundle for the server's TLS cert.")
    connect_timeout: float = Field(2.0, gt=0, description="Seconds per connection attempt.")
    request_timeout: float = Field(5.0, gt=0, description="Seconds to wait for JetStream.")
    replicas: int | None = Field(
        None,
        ge=1,
        le=5,
        description="Copies of each stream and KV bucket on a NATS cluster; unset: 1 for what "
        "is created, and existing ones keep their count.",
    )

    @classmethod
    def from_flags(cls, **flags: Any) -> Settings:
        """Settings where the given (non-None) flags override the environment."""
        try:
            return cls(**{k: v for k, v in flags.items() if v is not None})
        except ValueError as exc:
            raise RanvierError(f"invalid setting: {exc}") from None

    @property
    def url_file(self) -> Path:
        """`<state-dir>/nats.url`: the URL of the server `ranvier up`/`server` started."""
        return self.state_dir / URL_FILE

    @property
    def store_dir(self) -> Path:
        """`<state-dir>/nats`: the embedded server's JetStream store."""
        return self.state_dir / STORE_DIR

    def resolve_url(self) -> tuple[str, str]:
        """The NATS URL to use, without credentials, and where it came from (flag/env, state
        dir, or default)."""
        if self.nats_url:
            return split_url(self.nats_url)[0], "settings"
        recorded = self._recorded_url()
        if recorded:
            return recorded, str(self.url_file)
        return DEFAULT_URL, "default"

    def _recorded_url(self) -> str:
        """The URL in the state dir's `nats.url` ("" when there is none)."""
        try:
            found = self.url_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return ""
        except OSError as exc:
            raise RanvierError(f"cannot read {self.url_file}: {exc.strerror}") from None
        return split_url(found)[0]

    @property
    def given_credentials(self) -> Credentials:
        """The token or user/password from flags or `RANVIER_*` (empty when none)."""
        if self.token is not None:
            return Credentials(token=self.token)
        if self.user is not None:
            return Credentials(user=self.user, password=self.password)
        return Credentials()

    def credentials(self) -> Credentials:
        """What to present: flags and `RANVIER_*` first (a token or user in the URL is one),
        then the state dir's credentials, but only to the server the state dir records."""
        if not self.given_credentials.empty or self.creds_file or self.nkey_seed:
            return self.given_credentials
        url, origin = self.resolve_url()
        if self.nats_url:
            in_url = split_url(self.nats_url)[1]
            if not in_url.empty:
                return in_url
            if {_host_port(u) for u in _split(url)} != {
                _host_port(u) for u in _split(self._recorded_url())
            }:
                return Credentials()
        elif origin == "default":
            return Credentials()
        return read_credentials(self.state_dir) or Credentials()

    def task_url(self) -> str:
        """The one value a task needs to reach the bus: the URL with the token (or user and
        password) in it; a .creds file or nkey seed is not passed on."""
        url, _ = self.resolve_url()
        return self.credentials().in_url(url)

    def stream_limits(self) -> StreamLimits:
        """The streams' and buckets' settings (their replica count) for these settings."""
        return StreamLimits(replicas=self.replicas)

    def connect_options(self, *, name: str = "ranvier") -> ConnectOptions:
        """The bus's connection options for these settings."""
        url, _ = self.resolve_url()
        credentials = self.credentials()
        return ConnectOptions(
            servers=_split(url),
            user=credentials.user,
            password=_plain(credentials.password),
            token=_plain(credentials.token),
            creds_file=self.creds_file,
            nkey_seed=self.nkey_seed,
            tls_ca_file=self.tls_ca_file,
            name=name,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
        )


def write_url_file(path: Path, url: str) -> None:
    """Record a running server's URL (atomically, so readers never see half a URL)."""
    secure_state_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(url + "\n", encoding="utf-8")
    tmp.replace(path)


def remove_url_file(path: Path, url: str) -> None:
    """Remove the URL file if it still names `url` (another server may have replaced it)."""
    try:
        if path.read_text(encoding="utf-8").strip() == url:
            path.unlink()
    except FileNotFoundError:
        pass
