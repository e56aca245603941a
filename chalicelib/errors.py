"""Domain errors. Routes map them to HTTP answers; senders map them to retry decisions."""

from __future__ import annotations


class MailpipeError(Exception):
    """Base of every error the domain raises on purpose."""


class InvalidCampaign(MailpipeError):
    """The request cannot become a campaign; ``errors`` names each bad field or row."""

    def __init__(self, errors: list[dict]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self.errors = errors


class PayloadTooLarge(MailpipeError):
    """The request body or recipient list is over the configured limit."""


class Unauthorized(MailpipeError):
    """No token, or a token that does not verify."""


class Forbidden(MailpipeError):
    """A valid token without the scope the operation needs."""


class NotFound(MailpipeError):
    """No such thing for this tenant (another tenant's campaign looks exactly like this)."""


class Conflict(MailpipeError):
    """The operation does not fit the campaign's current state."""


class DeliveryError(MailpipeError):
    """SMTP did not accept the mail. ``code`` is the reply code, or None without one."""

    def __init__(self, message: str, code: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after_s = retry_after_s


class TemporaryDeliveryError(DeliveryError):
    """4xx, timeout, refused or dropped connection: try again later."""


class PermanentDeliveryError(DeliveryError):
    """5xx: never retry; the address bounces."""


class NotSendable(PermanentDeliveryError):
    """Refused before any SMTP command: this mail cannot go over this relay (an address with no
    IDNA form, a non-ASCII address the relay has no SMTPUTF8 for, a message that cannot be encoded).

    Never retried, but the address is not at fault: the recipient fails and is not suppressed.
    """
