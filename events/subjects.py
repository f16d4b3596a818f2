"""Subject, stream and bucket names, in one place.

Names that come from users (axon, task, sensor, metric names) become subject tokens, so they are
sanitised here: a token can never carry `.`, `*`, `>` or whitespace into a subject, which would
let one Axon's events match another's filter. Sanitising is lossless for names the Axon loader
accepts (letters, digits, `-`, `_`), and maps anything else to `_` plus a short digest, so two
different names never share a token.

Partitions: publishers write events to `ranvier.ev.<axon>.<kind>[.<name>]`; the events stream
stores each under `ranvier.evp.<partition>.<axon>.<kind>[.<name>]`, the partition computed by
the server's subject transform `{{partition(P,1)}}` (FNV-1a of the axon token, modulo P). So no
publisher needs to know P, an Axon's events stay in order within one partition, and each
engine replica consumes only the partitions it holds. `partition_of` is the same function in
Python (a test checks it against the server), for everything that must know an Axon's
partition without asking the server: which state keys a partition's owner loads.
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
"""What publishers write to: the events stream listens here."""
STORED_EVENTS: Final = f"{PREFIX}.evp.>"
"""Every event as the events stream stores it (partition token first): filter on this."""
DEFAULT_PARTITIONS: Final = 16
PARTITIONS_KEY: Final = "ranvier.partitions"
"""The stream metadata (and lease bucket metadata) entry recording the partition count."""
ACTIONS_SUBJECTS: Final = f"{PREFIX}.act.>"
DECISIONS_SUBJECTS: Final = f"{PREFIX}.dec.>"

# Key-value buckets.
AXONS_BUCKET: Final = "ranvier_axons"
STATE_BUCKET: Final = "ranvier_state"
RUNS_BUCKET: Final = "ranvier_runs"
MODELS_BUCKET: Final = "ranvier_models"
LEASES_BUCKET: Final = "ranvier_leases"

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
    """A subject filter over the stored events, narrowed by axon and event kind when given."""
    a = token(axon) if axon else "*"
    if kind is None:
        return f"{PREFIX}.evp.*.{a}.>"
    # Axon and tick events have no trailing name token; every other kind has exactly one.
    return f"{PREFIX}.evp.*.{a}.{token(kind)}" + ("" if kind in ("axon", "tick") else ".*")


def partition_transform(partitions: int) -> tuple[str, str]:
    """The events stream's subject transform (source, destination) for `partitions`."""
    return (
        f"{PREFIX}.ev.*.>",
        f"{PREFIX}.evp.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}.>",
    )


def stored_subject(subject: str, partitions: int) -> str:
    """The subject the events stream stores a published event subject under."""
    parts = subject.split(".", 3)
    if len(parts) < 4 or parts[:2] != [PREFIX, "ev"]:
        return subject  # outside the transform's source: stored as published
    return f"{PREFIX}.evp.{partition_of(parts[2], partitions)}.{parts[2]}.{parts[3]}"


def partition_filter(partition: int) -> str:
    """The stored events of one partition."""
    return f"{PREFIX}.evp.{partition}.>"


_FNV_OFFSET: Final = 0x811C9DC5
_FNV_PRIME: Final = 0x01000193


@functools.lru_cache(maxsize=65536)
def partition_of(axon: str, partitions: int) -> int:
    """The partition of an Axon's events: FNV-1a (32 bit) of its subject token, modulo
    `partitions`, exactly as nats-server's `{{partition(P,1)}}` computes it. Axons of one name
    in different namespaces share a subject token, hence a partition (and stay in order)."""
    if partitions < 1:
        raise ValueError(f"partitions must be at least 1, not {partitions}")
    h = _FNV_OFFSET
    for byte in token(axon).encode():
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h % partitions
