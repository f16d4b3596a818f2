"""What a nats-server is told: its command line, and a private config file for the rest.

Credentials (a token, a user and password, nkey users) go in a config file written 0600 in the
store, never on the command line: `ps` shows every process's argv to every user. An
authenticated cluster's routes need the same secret, so its cluster settings go there too.
Everything here is pure but `write_private`.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from events.server.errors import ServerError

CONFIG_FILE: Final = "ranvier-nats.conf"
ROUTE_USER: Final = "ranvier-route"


def _quoted(value: str) -> str:
    """A string as a double-quoted nats-server config value (JSON escapes, which it reads)."""
    return json.dumps(value)


def write_private(path: Path, text: str) -> Path:
    """Write `text` to `path` readable by its owner only (0600), atomically: the file never
    exists with wider permissions, nor half-written. Returns `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)  # O_CREAT's mode is masked by the umask, never widened
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class ServerConfig:
    """How one nats-server runs, but for its ports (a restart pins them) and its binary."""

    store_dir: Path
    host: str = "127.0.0.1"
    user: str | None = None
    password: str | None = None
    token: str | None = None
    max_payload: int | None = None
    nkey_users: tuple[str, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    name: str | None = None
    cluster: tuple[str, int] | None = None
    """The cluster's name and this server's route port (None outside a cluster)."""
    routes: tuple[str, ...] = ()
    extra_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if sum(bool(x) for x in (self.token, self.user or self.password, self.nkey_users)) > 1:
            raise ServerError("choose one of: a token, a user and password, or nkey users")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ServerError("TLS needs both a certificate and its key")

    @property
    def tls(self) -> bool:
        """True when clients connect over TLS."""
        return self.tls_cert is not None and self.tls_key is not None

    @property
    def authenticated(self) -> bool:
        """True when clients must present credentials (a token, a user, or an nkey)."""
        return bool(self.token or self.user or self.nkey_users)

    def argv(
        self, binary: Path, port: int, monitor_port: int | None, config_file: Path | None
    ) -> list[str]:
        """The command line (port 0 means "any free port"); `config_file` holds what
        `config_text` returned, when it returned anything."""
        argv = [str(binary), "--jetstream", "--store_dir", str(self.store_dir)]
        argv += ["--addr", self.host, "--port", str(port or -1)]
        if self.tls_cert is not None and self.tls_key is not None:
            argv += ["--tls", "--tlscert", str(self.tls_cert), "--tlskey", str(self.tls_key)]
        if self.name is not None:
            argv += ["--server_name", self.name]
        if self.cluster is not None and not self.authenticated:
            cluster_name, cluster_port = self.cluster
            argv += ["--cluster_name", cluster_name]
            argv += ["--cluster", f"nats://{self.host}:{cluster_port}"]
            if self.routes:
                argv += ["--routes", ",".join(self.routes)]
        if monitor_port is not None:
            argv += ["--http_port", str(monitor_port or -1)]
        if config_file is not None:
            argv += ["--config", str(config_file)]
        return argv + list(self.extra_args)

    def config_text(self) -> str:
        """nats-server config for what has no flag, and for the credentials, which must never
        be in argv (`ps` shows every process's argv to every user): the file is written 0600.
        """
        lines = []
        if self.max_payload is not None:
            lines.append(f"max_payload: {self.max_payload}")
        if self.nkey_users:
            users = ", ".join(f"{{nkey: {_quoted(key)}}}" for key in self.nkey_users)
            lines.append(f"authorization {{ users = [{users}] }}")
        if self.token is not None:
            lines.append(f"authorization {{ token: {_quoted(self.token)} }}")
        if self.user is not None:
            user, password = _quoted(self.user), _quoted(self.password or "")
            lines.append(f"authorization {{ user: {user}, password: {password} }}")
        if self.cluster is not None and self.authenticated:
            lines.append(self._cluster_config())
        return "".join(line + "\n" for line in lines)

    def _cluster_config(self) -> str:
        """The cluster block of an authenticated server: its routes need credentials too (a
        stranger joining as a route would see every message), and route URLs carry them, so
        the whole block is in the private config file rather than in argv."""
        assert self.cluster is not None
        name, port = self.cluster
        secret = self.token or self.password or ""
        auth = f"authorization {{ user: {_quoted(ROUTE_USER)}, password: {_quoted(secret)} }}"
        userinfo = f"{ROUTE_USER}:{urllib.parse.quote(secret, safe='')}@"
        routes = ", ".join(_quoted(r.replace("://", f"://{userinfo}", 1)) for r in self.routes)
        return (
            f"cluster {{ name: {_quoted(name)}, listen: {_quoted(f'{self.host}:{port}')}, "
            f"{auth}, routes: [{routes}] }}"
        )
