"""Process trees on this machine: start one in its own session, tell it apart, stop all of it.

The local backend's task runs and the local deployer's model servers are both process trees
that must never outlive what started them and never be confused with an unrelated process
that reused a pid. So each is started in its own session (the leader's pid is the process
group and session id), identified by the kernel's start time of its pid and the boot id, and
recorded as one JSON file per tree, so that a restarted executor can stop what a crashed one
left behind. Linux `/proc` is read where it exists, with portable fallbacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

import structlog

from events.subjects import token

log = structlog.get_logger(__name__)


_POLL: Final = 0.02


@dataclass(frozen=True, kw_only=True)
class SessionRecord:
    """What a record on disk says of a process tree: its leader and the executor that owns it.

    The kernel's start time of the pid and the boot id tell the leader from a later process
    that reused its pid.
    """

    pid: int
    pgid: int
    proc_start: int | None
    boot_id: str | None
    owner_pid: int | None = None
    owner_start: int | None = None

    def owner_alive(self, boot: str | None) -> bool:
        """True if another executor process, still running, started the tree (not ours)."""
        if self.owner_pid is None or self.owner_pid == os.getpid() or self.boot_id != boot:
            return False
        start = proc_start(self.owner_pid)
        return start is not None and start == self.owner_start


R = TypeVar("R", bound=SessionRecord)


def proc_stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, pgrp, session, starttime) of `pid` from /proc, or None if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[2]), int(fields[3]), int(fields[19])


def proc_start(pid: int) -> int | None:
    """The kernel's start time of a live `pid` (to tell it from a later one with the same pid)."""
    stat = proc_stat(pid)
    return None if stat is None or stat[0] in ("Z", "X") else stat[3]


def boot_id() -> str | None:
    """This boot's id: a pid recorded before a reboot names nothing of ours."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def session_ids(pid: int) -> dict[str, Any]:
    """The `SessionRecord` fields of a session just started with leader `pid`, owned by us."""
    stat = proc_stat(pid)
    return {
        "pid": pid,
        "pgid": pid,  # start_new_session: the leader's pid is the group and session id
        "proc_start": stat[3] if stat else None,
        "boot_id": boot_id(),
        "owner_pid": os.getpid(),
        "owner_start": proc_start(os.getpid()),
    }


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group or session `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover  # non-Linux: ask the kernel about the group
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members: list[int] = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        stat = proc_stat(int(entry.name))
        if stat is None:
            continue
        state, pgrp, session, _ = stat
        if pgid in (pgrp, session) and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


async def start_session(
    argv: list[str], cwd: Path, env: dict[str, str], log_path: Path
) -> asyncio.subprocess.Process:
    """Start `argv` in a new session, stdout and stderr to `log_path`, no stdin.

    OSError (FileNotFoundError, PermissionError, ...) when it cannot be started.
    """
    with log_path.open("wb") as logfile:
        return await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=logfile,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )


def _signal_tree(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in group_members(pgid):  # members that moved to another group of the session
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


async def _wait_gone(pgid: int, within: float, proc: asyncio.subprocess.Process | None) -> bool:
    """Wait until the leader is reaped and no member is alive; False if `within` s passed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        leader_done = proc is None or proc.returncode is not None
        if leader_done and not group_members(pgid):
            return True
        if loop.time() >= deadline:
            return False
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_POLL):
                    await asyncio.shield(proc.wait())
        else:
            await asyncio.sleep(_POLL)


async def stop_tree(
    pgid: int, grace: float, proc: asyncio.subprocess.Process | None = None
) -> bool:
    """SIGTERM the group, wait `grace`, then SIGKILL; reap the leader. True if any was alive."""
    alive = bool(group_members(pgid)) or (proc is not None and proc.returncode is None)
    if not alive:
        return False
    _signal_tree(pgid, signal.SIGTERM)
    if not await _wait_gone(pgid, grace, proc):
        _signal_tree(pgid, signal.SIGKILL)
        await _wait_gone(pgid, max(grace, 5.0), proc)
    if proc is not None:
        await proc.wait()  # reaped: no zombie left by us
    return True


def last_line(path: Path, limit: int = 200, tail: int = 4096) -> str:
    """The last non-empty line of a log file's last `tail` bytes (for messages), shortened."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[-1] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def exit_message(code: int, log_path: Path) -> str:
    """`exited with code N` or `killed by SIGX`, with the log's last line."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        message = f"killed by {name}"
    else:
        message = f"exited with code {code}"
    last = last_line(log_path)
    return f"{message}: {last}" if last else message


# ---------------------------------------------------------------------------------------------
# Records on disk: one JSON file per live tree


@dataclass(frozen=True)
class RecordFiles(Generic[R]):
    """The records of live process trees of one kind: `<directory>/<name>.json` each."""

    directory: Path
    kind: type[R]
    unreadable: str
    """The event logged for a record that cannot be read (it is removed)."""

    def write(self, name: str, record: R) -> None:
        """Write `record` as `<name>.json`, atomically (a rename)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".record.", dir=self.directory)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(record), out)
        os.replace(tmp, self.directory / f"{token(name)}.json")

    def remove(self, name: str) -> None:
        """Remove `<name>.json` (gone already is fine)."""
        (self.directory / f"{token(name)}.json").unlink(missing_ok=True)

    def read(self) -> Iterator[tuple[Path, R]]:
        """Every record, by name; an unreadable one is logged and removed."""
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = self.kind(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError) as exc:
                log.warning(self.unreadable, path=str(path), error=str(exc))
                path.unlink(missing_ok=True)
                continue
            yield path, record
