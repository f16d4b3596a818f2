"""`ranvier server` and `ranvier events` end to end, against real nats-servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from events import subjects
from events.bus import Bus, ConnectOptions
from events.errors import RanvierError
from events.model import Event, LifecycleData, MetricData
from events.server import EmbeddedServer
from ranvier.cli import main
from ranvier.commands.events import build_event, cli_logging, parse_duration, parse_when
from tests.conftest import MakeServer

pytestmark = pytest.mark.e2e

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
RANVIER = Path(sys.executable).parent / "ranvier"


@pytest.fixture(autouse=True)
def _logs_to_stderr() -> Iterator[None]:
    """The helpers below log too; keep stdout for the commands' output, as the CLI does."""
    with cli_logging():
        yield


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10m", 600), ("90s", 90), ("1h30m", 5400), ("2d", 172800), ("500ms", 0.5), ("1w", 604800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "1h 2", "-5m", "10m!"])
def test_not_durations(text: str) -> None:
    assert parse_duration(text) is None


def test_since_accepts_seq_duration_and_rfc3339() -> None:
    assert parse_when("42", flag="--since", now=NOW) == 42
    assert parse_when("10m", flag="--since", now=NOW) == NOW - timedelta(minutes=10)
    assert parse_when("2026-11-27T10:00:00Z", flag="--since", now=NOW) == datetime(
        2026, 11, 27, 10, tzinfo=UTC
    )
    assert parse_when("2026-11-27T10:00:00", flag="--since", now=NOW) == datetime(
        2026, 11, 27, 10, tzinfo=UTC
    )
    with pytest.raises(RanvierError, match="--since: expected a duration like 10m"):
        parse_when("yesterday", flag="--since", now=NOW)
    with pytest.raises(RanvierError, match="--until"):
        parse_when("42", flag="--until", now=NOW, allow_seq=False)


def test_publish_data_is_validated_against_the_typed_payload() -> None:
    ev = build_event("lifecycle", "ml", '{"task": "T", "run_id": "r", "phase": "Running"}', "x1")
    assert ev.id == "x1"
    assert ev.nats_subject == "ranvier.ev.ml.lifecycle.T"
    with pytest.raises(RanvierError, match="phase"):
        build_event("lifecycle", "ml", '{"task": "T", "run_id": "r", "phase": "Done"}', None)
    with pytest.raises(RanvierError, match="not JSON"):
        build_event("metric", "ml", "{name: acc}", None)
    with pytest.raises(RanvierError, match="unknown event type 'nope'"):
        build_event("nope", "ml", "{}", None)
    with pytest.raises(RanvierError, match="--axon is 'ml'"):
        build_event("metric", "ml", '{"axon": "other", "name": "m", "value": 1}', None)


# -- helpers against a server ----------------------------------------------------------------


def publish_all(url: str, events: list[Event]) -> None:
    async def go() -> None:
        async with Bus.connect(ConnectOptions(servers=[url])) as bus:
            await bus.publish_many(events)

    asyncio.run(go())


def stored_count(url: str) -> int:
    async def go() -> int:
        async with Bus.connect(ConnectOptions(servers=[url])) as bus:
            return int((await bus.stream_info()).state.messages)

    return asyncio.run(go())


def some_events(n: int) -> list[Event]:
    out: list[Event] = []
    for i in range(n):
        if i % 3 == 0:
            data = LifecycleData(axon=f"ax{i % 2}", task=f"T{i}", run_id=f"r{i}", phase="Running")
            out.append(data.to_event(source="test"))
        else:
            labels = {"k": "ü ✓", "i": str(i)}
            out.append(
                MetricData(axon=f"ax{i % 2}", name="acc", value=i / 7, labels=labels).to_event(
                    source="test"
                )
            )
    return out


# -- export / import ---------------------------------------------------------------------------


def test_export_import_export_round_trip_of_10000_events(
    make_nats_server: MakeServer, tmp_path: Path
) -> None:
    first = make_nats_server()
    events = some_events(10_000)
    publish_all(first.url, events)
    export1 = tmp_path / "one.jsonl"
    assert main(["events", "export", "--nats-url", first.url, "-f", str(export1)]) == 0
    lines = export1.read_bytes().split(b"\n")
    assert lines[-1] == b""
    assert lines[:-1] == [ev.to_json() for ev in events]  # all, in order, byte-identical

    second = make_nats_server()
    assert main(["events", "import", str(export1), "--nats-url", second.url]) == 0
    export2 = tmp_path / "two.jsonl"
    assert main(["events", "export", "--nats-url", second.url, "-f", str(export2)]) == 0
    assert export2.read_bytes() == export1.read_bytes()

    # Ids are kept, so a second import within the duplicate window adds nothing.
    assert main(["events", "import", str(export1), "--nats-url", second.url]) == 0
    assert stored_count(second.url) == 10_000


def test_export_filters(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    events = some_events(30)
    publish_all(nats_server.url, events)
    out = tmp_path / "f.jsonl"
    args = ["events", "export", "--nats-url", nats_server.url, "-f", str(out)]
    assert main([*args, "--axon", "ax1", "--type", "metric"]) == 0
    got = [Event.from_json(line) for line in out.read_bytes().splitlines()]
    want = [e for e in events if e.data["axon"] == "ax1" and e.type == "ranvier.metric"]
    assert [e.id for e in got] == [e.id for e in want]
    assert main([*args, "--since", "11"]) == 0
    assert len(out.read_bytes().splitlines()) == 20
    assert main([*args, "--until", "1h"]) == 0  # everything was stored less than 1h ago
    assert out.read_bytes() == b""


def test_malformed_import_lines_import_nothing(
    nats_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = some_events(3)
    bad_file = tmp_path / "mixed.jsonl"
    bad_file.write_bytes(
        b"\n".join(
            [
                good[0].to_json(),
                b"{not json",
                good[1].to_json(),
                b'{"id":"x","source":"s","type":"ranvier.metric","time":"2026-01-01T00:00:00Z"}',
                good[2].to_json(),
            ]
        )
        + b"\n"
    )
    code = main(["events", "import", str(bad_file), "--nats-url", nats_server.url])
    err = capsys.readouterr().err
    assert code == 1
    assert f"{bad_file}:2: error: not a ranvier event" in err
    assert f"{bad_file}:4: error:" in err
    assert "axon" in err  # line 4's metric data has no axon
    assert f"error: {bad_file}: 2 bad line(s), nothing imported" in err
    assert "Traceback" not in err
    assert stored_count(nats_server.url) == 0


def test_unknown_flags_and_unreachable_servers_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["events", "export", "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --no-such-flag" in err
    assert "Traceback" not in err
    url = "nats://127.0.0.1:9"  # discard port: nothing listens on it
    assert main(["events", "export", "--nats-url", url, "--state-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: cannot reach a NATS server at {url}")
    assert "ranvier server" in err


def test_wrong_password_says_authorization_failed(
    make_nats_server: MakeServer, capsys: pytest.CaptureFixture[str]
) -> None:
    srv = make_nats_server(user="ana", password="s3cret")
    base = ["events", "publish", "--type", "metric", "--axon", "ml", "--nats-url", srv.url]
    data = ["--data", '{"name": "acc", "value": 1}']
    assert main([*base, *data, "--user", "ana", "--password", "nope"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: authorization failed at {srv.url} with user 'ana'")
    assert "nope" not in err
    assert main([*base, *data, "--user", "ana", "--password", "s3cret", "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["seq"] == 1


def test_connection_falls_back_to_env_then_state_dir(
    nats_server: EmbeddedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publish = ["events", "publish", "--type", "axon", "--axon", "ml"]
    data = ["--data", '{"generation": 1, "action": "submitted"}', "-o", "json"]
    state = tmp_path / "state"
    state.mkdir()
    (state / "nats.url").write_text(nats_server.url + "\n")
    monkeypatch.delenv("RANVIER_NATS_URL", raising=False)
    assert main([*publish, *data, "--state-dir", str(state)]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 1
    monkeypatch.setenv("RANVIER_NATS_URL", nats_server.url)
    monkeypatch.setenv("RANVIER_STATE_DIR", str(tmp_path / "empty"))
    assert main([*publish, *data]) == 0
    assert json.loads(capsys.readouterr().out)["seq"] == 2


def test_export_starts_the_embedded_server_on_a_stopped_state_dir(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    state = tmp_path / "state"
    events = some_events(5)
    with EmbeddedServer(store_dir=state / "nats") as srv:
        publish_all(srv.url, events)
        (state / "nats.url").write_text(srv.url)
        srv.kill()  # as if `ranvier up` had crashed: the URL file stays, nothing listens
    assert main(["events", "export", "--state-dir", str(state)]) == 0
    assert capsysbinary.readouterr().out == b"".join(e.to_json() + b"\n" for e in events)


def test_replay_republishes_with_new_ids(
    nats_server: EmbeddedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = some_events(6)
    publish_all(nats_server.url, events)
    url = ["--nats-url", nats_server.url]
    assert (
        main(["events", "replay", "--since", "1", "--axon", "ax0", "--type", "metric", *url]) == 0
    )
    assert "replayed 2 events" in capsys.readouterr().out
    out = tmp_path / "all.jsonl"
    assert main(["events", "export", *url, "-f", str(out)]) == 0
    stored = [Event.from_json(line) for line in out.read_bytes().splitlines()]
    originals = [e for e in events if e.data["axon"] == "ax0" and e.type == "ranvier.metric"]
    copies = stored[6:]
    assert [c.replayof for c in copies] == [o.id for o in originals]
    assert all(c.id not in {e.id for e in events} for c in copies)
    assert [c.data for c in copies] == [o.data for o in originals]


def test_tail_prints_events_as_json(
    nats_server: EmbeddedServer, capsys: pytest.CaptureFixture[str]
) -> None:
    events = some_events(4)
    publish_all(nats_server.url, events)
    args = ["events", "tail", "--nats-url", nats_server.url, "--since", "1", "-n", "4"]
    assert main([*args, "-o", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [Event.from_json(line).id for line in lines] == [e.id for e in events]
    assert main([*args, "--type", "lifecycle", "-n", "1"]) == 0
    text = capsys.readouterr().out
    assert "ranvier.lifecycle T0" in text


# -- real processes ---------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(RANVIER), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_console_script_exit_codes_and_stderr(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text("hello\n")
    done = run_cli("events", "import", str(bad), "--nats-url", "nats://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"{bad}:1: error: not a ranvier event: (document): Invalid JSON: "
        "expected value at line 1 column 1",
        f"error: {bad}: 1 bad line(s), nothing imported",
    ]
    done = run_cli("events", "tail", "--nats-url", "nats://127.0.0.1:9")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("error: cannot reach a NATS server at nats://127.0.0.1:9")
    assert "Traceback" not in done.stderr


def test_server_command_runs_in_the_foreground_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [str(RANVIER), "server", "--port", "0", "--state-dir", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("nats://127.0.0.1:")
        assert (state / "nats.url").read_text().strip() == url
        assert (state / "nats" / "jetstream").is_dir()
        published = run_cli(
            "events", "publish", "--type", "metric", "--axon", "ml", "--state-dir", str(state),
            "--data", '{"name": "acc", "value": 0.5}',
        )  # fmt: skip
        assert published.returncode == 0, published.stderr
        assert "to RANVIER_EVENTS seq 1" in published.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
    assert not (state / "nats.url").exists()
    children = subprocess.run(
        ["pgrep", "-f", f"nats-server.*{state}"], capture_output=True, text=True, check=False
    )
    assert children.stdout == ""


def test_server_port_taken_is_a_clear_error(nats_server: EmbeddedServer, tmp_path: Path) -> None:
    done = run_cli("server", "--port", str(nats_server.port), "--state-dir", str(tmp_path))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: cannot start nats-server: port {nats_server.port} on 127.0.0.1 is taken "
        "(choose another --port, or 0 for any free port)"
    )


def test_subjects_module_is_the_one_naming_the_stream() -> None:
    assert subjects.EVENTS_STREAM == "RANVIER_EVENTS"


def test_settings_precedence_flag_env_state_dir_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ranvier.settings import DEFAULT_URL, Settings

    for name in ("RANVIER_NATS_URL", "RANVIER_STATE_DIR", "RANVIER_PASSWORD", "RANVIER_USER"):
        monkeypatch.delenv(name, raising=False)
    state = tmp_path / "st"
    assert Settings.from_flags(state_dir=state).resolve_url() == (DEFAULT_URL, "default")
    state.mkdir()
    (state / "nats.url").write_text("nats://127.0.0.1:1111\n")
    assert Settings.from_flags(state_dir=state).resolve_url() == (
        "nats://127.0.0.1:1111",
        str(state / "nats.url"),
    )
    monkeypatch.setenv("RANVIER_NATS_URL", "nats://a:1,nats://b:2")
    monkeypatch.setenv("RANVIER_USER", "ana")
    monkeypatch.setenv("RANVIER_PASSWORD", "s3cret")
    settings = Settings.from_flags(state_dir=state)
    options = settings.connect_options()
    assert options.servers == ["nats://a:1", "nats://b:2"]
    assert (options.user, options.password) == ("ana", "s3cret")
    assert "s3cret" not in repr(settings)
    flagged = Settings.from_flags(state_dir=state, nats_url="nats://c:3", user=None)
    assert flagged.connect_options().servers == ["nats://c:3"]
    assert flagged.user == "ana"  # a flag not given leaves the environment's value
