"""Subject, stream and bucket names, in one place.

Names that come from users (axon, task, sensor, metric names) become subject tokens, so they are
sanitised here: a token can never carry `.`, `*`, `>` or whitespace into a subject, which would
let one Axon's events match another's filter. Sanitising is lossless for names the Axon loader
accepts (letters, digits, `-`, `_`), and maps anything else to `_` plus a short digest, so two
different names never share a token.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Final

PREFIX: Final = "ranvier"

# Streams and the subjects they hold.
EVENTS_STREAM: Final = "RANVIER_EVENTS"
ACTIONS_STREAM: Final = "RANVIER_ACTIONS"
DECISIONS_STREAM: Final = "RANVIER_DECISIONS"
EVENTS_SUBJECTS: Final = f"{PREFIX}.ev.>"
ACTIONS_SUBJECTS: Final = f"{PREFIX}.act.>"
DECISIONS_SUBJECTS: Final = f"{PREFIX}.dec.>"

# Key-value buckets.
AXONS_BUCKET: Final = "ranvier_axons"
STATE_BUCKET: Final = "ranvier_state"
RUNS_BUCKET: Final = "ranvier_runs"
MODELS_BUCKET: Final = "ranvier_models"

_SAFE = re.compile(r"[A-Za-z0-9_-]+")


@functools.lru_cache(maxsize=4096)  # names repeat on every event; publishing is hot
def token(name: str) -> str:
    """Return `name` as one safe subject token (no `.`, `*`, `>`, whitespace; never empty)."""
    if name and _SAFE.fullmatch(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:48]
    digest = hashlib.blake2s(name.encode("utf-8"), digest_size=4).hexdigest()
    return f"{cleaned}_{digest}"


def event_subject(axon: str, kind: str, name: str | None = None) -> str:
    """`ranvier.ev.<axon>.<kind>[.<name>]`, e.g. `ranvier.ev.ml-gpt2.lifecycle.TrainGPT2`."""
    base = f"{PREFIX}.ev.{token(axon)}.{token(kind)}"
    return base if name is None else f"{base}.{token(name)}"


def action_subject(axon: str, kind: str) -> str:
    """`ranvier.act.<axon>.<kind>`: where action requests for executors go."""
    return f"{PREFIX}.act.{token(axon)}.{token(kind)}"


def decision_subject(axon: str, sensor: str) -> str:
    """`ranvier.dec.<axon>.<sensor>`: decision records, for `explain` and debugging."""
    return f"{PREFIX}.dec.{token(axon)}.{token(sensor)}"


def events_filter(axon: str | None = None, kind: str | None = None) -> str:
    """A subject filter over the events stream, narrowed by axon and event kind when given."""
    a = token(axon) if axon else "*"
    if kind is None:
        return f"{PREFIX}.ev.{a}.>"
    # Axon events have no trailing name token; every other kind has exactly one.
    return f"{PREFIX}.ev.{a}.{token(kind)}" + ("" if kind == "axon" else ".*")
