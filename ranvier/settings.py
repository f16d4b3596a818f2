"""ranvier's settings: one place where flags, `RANVIER_*` variables and the state dir meet.

Every command that connects builds a `Settings` from its flags (only the ones given), so the
order of precedence is the same everywhere: flag, then environment variable (`RANVIER_NATS_URL`,
`RANVIER_USER`, ...), then the `nats.url` file that `ranvier up` / `ranvier server` write in the
state dir, then nats-server's default address.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from events.bus import ConnectOptions, StreamLimits
from events.errors import RanvierError

DEFAULT_URL: Final = "nats://127.0.0.1:4222"
URL_FILE: Final = "nats.url"
STORE_DIR: Final = "nats"


class Settings(BaseSettings):
    """Configuration from flags and `RANVIER_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="RANVIER_", extra="ignore", frozen=True)

    nats_url: str | None = Field(None, description="NATS URL(s), comma-separated.")
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
        """The NATS URL to use and where it came from (flag/env, state dir, or default)."""
        if self.nats_url:
            return self.nats_url, "settings"
        try:
            found = self.url_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            found = ""
        except OSError as exc:
            raise RanvierError(f"cannot read {self.url_file}: {exc.strerror}") from None
        if found:
            return found, str(self.url_file)
        return DEFAULT_URL, "default"

    def stream_limits(self) -> StreamLimits:
        """The streams' and buckets' settings (their replica count) for these settings."""
        return StreamLimits(replicas=self.replicas)

    def connect_options(self, *, name: str = "ranvier") -> ConnectOptions:
        """The bus's connection options for these settings."""
        url, _ = self.resolve_url()
        return ConnectOptions(
            servers=[u.strip() for u in url.split(",") if u.strip()],
            user=self.user,
            password=self.password.get_secret_value() if self.password else None,
            token=self.token.get_secret_value() if self.token else None,
            creds_file=self.creds_file,
            nkey_seed=self.nkey_seed,
            tls_ca_file=self.tls_ca_file,
            name=name,
            connect_timeout=self.connect_timeout,
            request_timeout=self.request_timeout,
        )


def write_url_file(path: Path, url: str) -> None:
    """Record a running server's URL (atomically, so readers never see half a URL)."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
