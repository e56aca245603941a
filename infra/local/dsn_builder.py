"""Build RFC 3464 delivery status notifications shaped like the ones Postfix (inside Mailu) sends.

The Mailu stand-in uses this to produce the delivered/failed/delayed reports that the bounce
reader has to understand, so the layout, field order and wording follow Postfix's bounce
daemon rather than whatever `email.mime` would generate.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from chalicelib.smtp import utf8_addr_xtext

REPORTING_MTA = "mail.mailpipe.local"

_SUBJECTS = {
    "failed": "Undelivered Mail Returned to Sender",
    "delayed": "Delayed Mail (still being retried)",
    "delivered": "Successful Mail Delivery Report",
    "relayed": "Successful Mail Delivery Report",
    "expanded": "Successful Mail Delivery Report",
}

_FAILED_TEXT = """\
I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.
"""

_DELAYED_TEXT = """\
####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for 4.0 hours.
It will be retried until it is 5.0 days old.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.
"""

_DELIVERED_TEXT = """\
Your message was successfully delivered to the destination(s)
listed below. If the message was delivered to mailbox you will
receive no further notifications. Otherwise you may still receive
notifications of mail delivery errors from other systems.
"""


def xtext_encode(value: str) -> str:
    """RFC 3461 xtext: "+", "=" and anything outside printable ASCII become "+XX"."""
    return "".join(
        f"+{ord(ch):02X}" if ch in "+=" or not 33 <= ord(ch) <= 126 else ch
        for ch in value.encode("utf-8").decode("latin-1")
    )


def build_dsn(
    *,
    envelope_id: str | None,
    original_headers: bytes,
    recipient: str,
    action: str,
    status: str,
    diagnostic: str | None,
    reporting_mta: str = REPORTING_MTA,
    orcpt: str | None = None,
    sender: str | None = None,
    remote_mta: str | None = None,
    original_message: bytes | None = None,
    arrival_date: datetime | None = None,
) -> bytes:
    """One delivery status notification for one recipient, as the bytes of a message.

    `diagnostic` is the remote reply without its type ("550 5.1.1 user unknown"); it is
    written as an "smtp;" Diagnostic-Code. `envelope_id` and `orcpt` are the decoded ENVID
    and ORCPT address; they are written xtext-encoded. `sender` (the original envelope
    sender) becomes the To: header. With `original_message` (RET=FULL) the whole message is
    returned as message/rfc822, otherwise `original_headers` as text/rfc822-headers.
    """
    now = datetime.now(UTC)
    arrival = arrival_date or now
    queue_id = secrets.token_hex(5).upper()
    boundary = f"{queue_id}.{int(now.timestamp())}/{reporting_mta}"
    action = action.lower()
    postmaster = f"MAILER-DAEMON@{reporting_mta}"

    lines = [
        f"Date: {_date(now)}",
        f"From: {postmaster} (Mail Delivery System)",
        f"Subject: {_SUBJECTS.get(action, 'Mail Delivery Status Report')}",
    ]
    if sender:
        lines.append(f"To: {sender}")
    lines += [
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: 8bit",
        f"Message-Id: <{now:%Y%m%d%H%M%S}.{queue_id}@{reporting_mta}>",
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        _human_text(action),
        "                   The mail system",
        "",
        _human_line(recipient, action, remote_mta, diagnostic),
        "",
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Postfix-Queue-ID: {queue_id}",
    ]
    if envelope_id:
        lines.append(f"Original-Envelope-Id: {xtext_encode(envelope_id)}")
    if sender:
        lines.append(f"X-Postfix-Sender: rfc822; {sender}")
    # A non-ASCII address is RFC 6533's utf-8 type, escaped as \x{..}: what message/delivery-status may hold.
    final = f"rfc822; {recipient}" if recipient.isascii() else f"utf-8; {utf8_addr_xtext(recipient)}"
    lines += [f"Arrival-Date: {_date(arrival)}", "", f"Final-Recipient: {final}"]
    if orcpt:
        original = f"rfc822;{xtext_encode(orcpt)}" if orcpt.isascii() else f"utf-8;{utf8_addr_xtext(orcpt)}"
        lines.append(f"Original-Recipient: {original}")
    lines += [f"Action: {action}", f"Status: {status}"]
    if remote_mta:
        lines.append(f"Remote-MTA: dns; {remote_mta}")
    if diagnostic:
        lines.append(f"Diagnostic-Code: smtp; {diagnostic}")
    if action == "delayed":
        lines.append(f"Will-Retry-Until: {_date(arrival + timedelta(days=5))}")
    lines.append("")

    head = "\n".join(lines).encode("utf-8")
    undelivered = "Undelivered " if action in ("failed", "delayed") else ""
    if original_message is not None:
        returned_head = (
            f"\n--{boundary}\nContent-Description: {undelivered}Message\n"
            "Content-Type: message/rfc822\nContent-Transfer-Encoding: 8bit\n\n"
        )
        returned = _lf(original_message)
    else:
        returned_head = (
            f"\n--{boundary}\nContent-Description: {undelivered}Message Headers\n"
            "Content-Type: text/rfc822-headers\nContent-Transfer-Encoding: 8bit\n\n"
        )
        returned = _lf(original_headers).split(b"\n\n", 1)[0]
    if not returned.endswith(b"\n"):
        returned += b"\n"
    return head + returned_head.encode() + returned + f"\n--{boundary}--\n".encode()


def _date(moment: datetime) -> str:
    return f"{format_datetime(moment)} ({moment.tzname() or 'UTC'})"


def _human_text(action: str) -> str:
    if action == "failed":
        return _FAILED_TEXT
    if action == "delayed":
        return _DELAYED_TEXT
    return _DELIVERED_TEXT


def _human_line(recipient: str, action: str, remote_mta: str | None, diagnostic: str | None) -> str:
    where = remote_mta or "the destination"
    if action in ("failed", "delayed"):
        return f"<{recipient}>: host {where} said: {diagnostic or 'no reason given'} (in reply to RCPT TO command)"
    return f"<{recipient}>: delivery via {where}: {diagnostic or '250 2.0.0 Ok'}"


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")
