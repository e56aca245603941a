"""The sender's SMTP pool against a relay that offers no DSN extension (a plain Postfix on 25, say).

RFC 3461 parameters sent to such a relay get ``555`` and every mail would be deferred
until dead-lettered; the pool sends them only where the relay offers DSN.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from chalicelib.settings import Settings
from chalicelib.smtp import Envelope, SmtpPool

pytestmark = pytest.mark.integration


class Recorder:
    """An aiosmtpd handler that keeps every envelope it accepts."""

    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append(envelope)
        return "250 2.0.0 queued as TEST"


@pytest.fixture()
def plain_relay() -> Iterator[tuple[Controller, Recorder]]:
    recorder = Recorder()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(recorder, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield controller, recorder
    finally:
        controller.stop()


def test_mail_goes_through_a_relay_without_dsn(plain_relay: tuple[Controller, Recorder]) -> None:
    controller, recorder = plain_relay
    settings = Settings(smtp_host="127.0.0.1", smtp_port=controller.port, smtp_tls="none")
    pool = SmtpPool(settings)
    try:
        reply = pool.submit(
            Envelope(
                sender="bounces@mailpipe.test",
                recipient="ann@example.org",
                message=b"From: a@mailpipe.test\r\nTo: ann@example.org\r\nSubject: hi\r\n\r\nhello\r\n",
                envelope_id="c1.ann",
            )
        ).result(timeout=10)
    finally:
        pool.close()

    assert reply.startswith("250")
    (envelope,) = recorder.envelopes
    assert envelope.rcpt_tos == ["ann@example.org"]
    assert not [o for o in envelope.mail_options if o.split("=")[0] in ("RET", "ENVID")]
    assert not [o for options in envelope.rcpt_options for o in options]  # no NOTIFY, no ORCPT
