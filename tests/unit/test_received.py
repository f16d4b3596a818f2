"""`Received.seq` reads the stream sequence from the reply subject as nats-py would."""

from __future__ import annotations

import pytest
from nats.aio.msg import Msg

from events.bus import Received

REPLIES = [
    # The form nats-server sends without a domain: stream, consumer, delivered, seq, ...
    "$JS.ACK.RANVIER_EVENTS.ranvier-engine.1.4711.4700.1764282842000000000.12",
    # With domain and account hash (and a random token): nats-py's v2 layout.
    "$JS.ACK.hub.ACCHASH.RANVIER_EVENTS.ranvier-engine.2.98765.98000.1764282842000000000.0.r4nd",
    "$JS.ACK._.ACCHASH.S.C.1.3.3.1764282842000000000.0",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_seq_is_the_stream_sequence_of_the_reply_subject(reply: str) -> None:
    want = Msg.Metadata._from_reply(reply).sequence.stream  # nats-py's reading
    got = Received(Msg(_client=None, subject="s", reply=reply))  # type: ignore[arg-type]
    assert got.seq == want


def test_a_message_without_a_jetstream_reply_is_refused_as_nats_py_does() -> None:
    from nats.errors import NotJSMessageError

    with pytest.raises(NotJSMessageError):
        _ = Received(Msg(_client=None, subject="s", reply="_INBOX.x")).seq  # type: ignore[arg-type]
