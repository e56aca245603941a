"""Parses and validates a create-campaign request at the edge.

Every problem is collected, not just the first: the 400 names each bad field
and each bad recipient row, so a client can fix its list in one go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formataddr, getaddresses
from typing import Any

from email_validator import EmailNotValidError, ValidatedEmail, validate_email
from jinja2 import TemplateError
from jinja2.exceptions import SecurityError

from chalicelib.errors import InvalidCampaign, PayloadTooLarge
from chalicelib.rendering import (
    BUILTIN_VARIABLES,
    RenderBudget,
    RenderBudgetExceeded,
    compile_errors,
    metered,
    recipient_context,
    render_field,
)
from chalicelib.timeutil import now_iso

MAX_NAME = 200
MAX_SUBJECT = 998  # RFC 5322 line limit
MAX_ROW_ERRORS = 200  # enough to fix a list; more would only bloat the answer
# Rows rendered for real at creation besides those missing a variable: the first few and an
# even spread, so a template slow or huge only for later rows is caught here, not at send time.
SAMPLE_HEAD = 10
SAMPLE_SPREAD = 40
VALIDATION_RENDER_S = 5.0  # all of creation's renders together; API Gateway gives up after 29 s
# How far ahead a campaign may be scheduled: further out is far more likely a typo of the year.
MAX_SCHEDULE_AHEAD_S = 366 * 24 * 3600
_LOCAL_SUFFIX = ".local"  # RFC 6762; with .test (RFC 6761), where a private Mailu lives


@dataclass(frozen=True)
class RecipientRow:
    """One valid recipient: normalized address and template variables."""

    email: str
    vars: dict[str, Any] = field(default_factory=dict)
    row: int = 0  # position in the request, for error messages


@dataclass(frozen=True)
class CampaignRequest:
    """A validated create-campaign request."""

    name: str
    from_addr: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None
    recipients: tuple[RecipientRow, ...]
    duplicates_dropped: int
    alerts: dict[str, float] = field(default_factory=dict)  # bounce_rate, failure_rate, min_sends
    track_opens: bool = True  # the 1x1 open pixel in html parts
    track_clicks: bool = True  # links rewritten to click-tracking URLs
    send_at: str | None = None  # UTC, the now_iso format; None: start at once
    list_id: str | None = None  # the contact list to send to, in place of inline recipients


def normalize_address(raw: str, allow_special_use_domains: bool = False, allow_smtputf8: bool = True) -> str:
    """Syntax-check one address and return its canonical form: the key for storage, matching and SMTP.

    The canonical form is lowercased, with the domain in IDNA 2008 A-labels (punycode), as
    email-validator computes it: ``Jose@Exämple.com`` is ``jose@xn--exmple-cua.com``. That is
    the form RCPT TO and the ``To:`` header carry and delivery reports name, and it makes
    the Unicode and punycode spellings of one mailbox the same recipient. A non-ASCII local
    part (RFC 6531) is accepted (NFC-normalized) unless ``allow_smtputf8`` is false: whether
    the relay offers SMTPUTF8 is only known at send time, where such a recipient without it
    gets a clear ``bounced`` outcome. Anything that is not an address at all is refused here.

    With ``allow_special_use_domains``, addresses on ``.test`` and ``.local`` pass too.
    email-validator exempts only ``test`` per call (``test_environment``); its list of
    special-use names is module state shared by the whole process, so it is left alone, and
    a ``.local`` domain is checked with that last label read as ``test``, then given back.
    """
    if not allow_special_use_domains:
        return _canonical(validate_email(raw, check_deliverability=False, allow_smtputf8=allow_smtputf8))
    local_part, at, domain = raw.rpartition("@")
    on_local = bool(at) and domain.lower().endswith(_LOCAL_SUFFIX)
    checked = f"{local_part}@{domain[: -len(_LOCAL_SUFFIX)]}.test" if on_local else raw
    normalized = _canonical(
        validate_email(checked, check_deliverability=False, allow_smtputf8=allow_smtputf8, test_environment=True)
    )
    return f"{normalized.removesuffix('.test')}{_LOCAL_SUFFIX}" if on_local else normalized


def _canonical(checked: ValidatedEmail) -> str:
    return f"{checked.local_part}@{checked.ascii_domain}".lower()


def _header_value(body: dict, name: str, errors: list[dict], required: bool) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        if required:
            errors.append({"field": name, "error": "required"})
        return None
    if not isinstance(value, str):
        errors.append({"field": name, "error": "must be a string"})
        return None
    if "\r" in value or "\n" in value:
        errors.append({"field": name, "error": "must not contain CR or LF"})
        return None
    return value


def _mailbox(body: dict, name: str, errors: list[dict], required: bool, allow_special_use: bool) -> str | None:
    value = _header_value(body, name, errors, required)
    if value is None:
        return None
    addresses = getaddresses([value])
    if len(addresses) != 1:
        errors.append({"field": name, "error": "must be exactly one address"})
        return None
    display, addr = addresses[0]
    try:
        # ASCII local part only: this header is on every mail, which would all need SMTPUTF8.
        canonical = normalize_address(addr, allow_special_use, allow_smtputf8=False)
    except EmailNotValidError as exc:
        errors.append({"field": name, "error": f"invalid address: {exc}"})
        return None
    if not addr.isascii():
        # An IDN domain: a header can only carry it as A-labels (no encoded words in an address).
        return formataddr((display, f"{addr.rpartition('@')[0]}@{canonical.rpartition('@')[2]}"))
    return value


def parse_campaign_request(
    body: Any,
    max_recipients: int,
    allow_special_use_domains: bool = False,
    render_budget: RenderBudget | None = None,
    now: float | None = None,
) -> CampaignRequest:
    """Validate a POST /campaigns body; raise InvalidCampaign listing every problem.

    ``allow_special_use_domains`` also accepts ``.test`` and ``.local`` addresses (local stage).
    ``render_budget`` is what the sender allows one recipient's render; a sampled row that
    overruns it is a 400 naming the field. ``now`` (epoch seconds) is the clock ``send_at`` is checked against.
    """
    if not isinstance(body, dict):
        raise InvalidCampaign([{"field": "body", "error": "must be a JSON object"}])
    errors: list[dict] = []

    name = body.get("name")
    if not isinstance(name, str) or not name.strip():
        errors.append({"field": "name", "error": "required"})
    elif len(name) > MAX_NAME:
        errors.append({"field": "name", "error": f"at most {MAX_NAME} characters"})
    from_addr = _mailbox(body, "from", errors, required=True, allow_special_use=allow_special_use_domains)
    reply_to = _mailbox(body, "reply_to", errors, required=False, allow_special_use=allow_special_use_domains)
    subject = _header_value(body, "subject", errors, required=True)
    if subject is not None and len(subject) > MAX_SUBJECT:
        errors.append({"field": "subject", "error": f"at most {MAX_SUBJECT} characters"})

    bodies: dict[str, str | None] = {}
    for part in ("text", "html"):
        value = body.get(part)
        if value is not None and not isinstance(value, str):
            errors.append({"field": part, "error": "must be a string"})
            value = None
        bodies[part] = value or None
    if not bodies["text"] and not bodies["html"]:
        errors.append({"field": "text", "error": "text or html is required and must not be empty"})

    template_errors, names = compile_errors({"subject": subject, **bodies})
    errors.extend(template_errors)

    alerts = _parse_alerts(body.get("alerts"), errors)
    track_opens = _flag(body, "track_opens", errors)
    track_clicks = _flag(body, "track_clicks", errors)
    send_at = _send_at(body.get("send_at"), errors, time.time() if now is None else now)
    list_id = _list_id(body, errors)
    rows: list[RecipientRow] = []
    duplicates = 0
    if list_id is None:
        rows, duplicates = _parse_recipients(body.get("recipients"), max_recipients, errors, allow_special_use_domains)
    if not template_errors:
        _check_variables(rows, names, {"subject": subject, **bodies}, errors, render_budget or RenderBudget())
    if errors:
        raise InvalidCampaign(errors[: MAX_ROW_ERRORS + 20])
    return CampaignRequest(
        name=name.strip(),  # type: ignore[union-attr]
        from_addr=from_addr,  # type: ignore[arg-type]
        subject=subject,  # type: ignore[arg-type]
        text=bodies["text"],
        html=bodies["html"],
        reply_to=reply_to,
        recipients=tuple(rows),
        duplicates_dropped=duplicates,
        alerts=alerts,
        track_opens=track_opens,
        track_clicks=track_clicks,
        send_at=send_at,
        list_id=list_id,
    )


MAX_LIST_ID = 64


def _list_id(body: dict, errors: list[dict]) -> str | None:
    """``list_id``, the alternative to ``recipients``: exactly one of the two."""
    value = body.get("list_id")
    if value is None:
        return None
    if "recipients" in body:
        errors.append({"field": "list_id", "error": "give recipients or list_id, not both"})
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_LIST_ID:
        errors.append(
            {"field": "list_id", "error": f"must be a list id (a string of at most {MAX_LIST_ID} characters)"}
        )
        return None
    return value


def check_sample_rows(request: CampaignRequest, rows: list[RecipientRow], budget: RenderBudget | None = None) -> None:
    """Render the templates for sample rows of a list (a 400 naming the field, row and variable).

    A list campaign's contacts are read by the fan-out, after the POST; the first
    contacts are rendered here so a template needing a column the list lacks is
    refused at once instead of failing every recipient later.
    """
    sources = {"subject": request.subject, "text": request.text, "html": request.html}
    template_errors, names = compile_errors(sources)
    errors: list[dict] = list(template_errors)
    if not template_errors:
        _check_variables(rows, names, sources, errors, budget or RenderBudget())
    if errors:
        raise InvalidCampaign(errors[: MAX_ROW_ERRORS + 20])


def parse_send_at(value: Any, now: float) -> str:
    """A ``send_at`` on its own (POST /campaigns/{id}/schedule): UTC in the stored format, or a 400."""
    errors: list[dict] = []
    parsed = _send_at(value, errors, now, required=True)
    if errors or parsed is None:
        raise InvalidCampaign(errors)
    return parsed


def _send_at(value: Any, errors: list[dict], now: float, required: bool = False) -> str | None:
    """An ISO 8601 moment with its offset, in the future and within a year; stored as UTC."""
    if value is None or value == "":
        if required:
            errors.append({"field": "send_at", "error": "required"})
        return None
    if not isinstance(value, str):
        errors.append({"field": "send_at", "error": "must be an ISO 8601 string, e.g. 2026-12-01T09:00:00+01:00"})
        return None
    try:
        # fromisoformat (3.11) takes "Z", offsets and fractions; a moment without an offset is
        # ambiguous (whose 09:00?), so it is refused rather than read as UTC.
        moment = datetime.fromisoformat(value)
    except ValueError:
        errors.append({"field": "send_at", "error": "not an ISO 8601 date and time, e.g. 2026-12-01T09:00:00Z"})
        return None
    if moment.tzinfo is None or moment.utcoffset() is None:
        errors.append({"field": "send_at", "error": "needs a time zone offset, e.g. Z or +01:00"})
        return None
    at = moment.timestamp()
    if at <= now:
        errors.append({"field": "send_at", "error": "must be in the future"})
        return None
    if at - now > MAX_SCHEDULE_AHEAD_S:
        errors.append({"field": "send_at", "error": "must be at most a year ahead"})
        return None
    return now_iso(at)


def _flag(body: dict, name: str, errors: list[dict], default: bool = True) -> bool:
    """An optional boolean option."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        errors.append({"field": name, "error": "must be true or false"})
        return default
    return value


def _parse_alerts(raw: Any, errors: list[dict]) -> dict[str, float]:
    """Optional per-campaign alert thresholds: rates in (0, 1], min_sends a positive integer."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append({"field": "alerts", "error": "must be an object"})
        return {}
    alerts: dict[str, float] = {}
    for name, value in raw.items():
        if name in ("bounce_rate", "failure_rate"):
            if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1:
                alerts[name] = float(value)
            else:
                errors.append({"field": f"alerts.{name}", "error": "must be a number in (0, 1]"})
        elif name == "min_sends":
            if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
                alerts[name] = value
            else:
                errors.append({"field": "alerts.min_sends", "error": "must be a positive integer"})
        else:
            errors.append({"field": f"alerts.{name}", "error": "unknown alert"})
    return alerts


def _parse_recipients(
    raw: Any, max_recipients: int, errors: list[dict], allow_special_use: bool
) -> tuple[list[RecipientRow], int]:
    if not isinstance(raw, list) or not raw:
        errors.append({"field": "recipients", "error": "must be a non-empty list"})
        return [], 0
    if len(raw) > max_recipients:
        raise PayloadTooLarge(f"at most {max_recipients} recipients per campaign, got {len(raw)}")
    seen: set[str] = set()
    rows: list[RecipientRow] = []
    duplicates = 0
    row_errors = 0
    for index, item in enumerate(raw):
        problem = None
        email = item.get("email") if isinstance(item, dict) else item if isinstance(item, str) else None
        variables = item.get("vars", {}) if isinstance(item, dict) else {}
        if not isinstance(email, str) or not email:
            problem = "email is required"
        elif not isinstance(variables, dict):
            problem = "vars must be an object"
        else:
            try:
                email = normalize_address(email, allow_special_use)
            except EmailNotValidError as exc:
                problem = f"invalid address: {exc}"
        if problem:
            row_errors += 1
            if row_errors <= MAX_ROW_ERRORS:
                errors.append({"row": index, "email": email if isinstance(email, str) else None, "error": problem})
            continue
        if email in seen:
            duplicates += 1
            continue
        seen.add(email)
        rows.append(RecipientRow(email=email, vars=variables, row=index))
    if row_errors > MAX_ROW_ERRORS:
        errors.append(
            {"field": "recipients", "error": f"{row_errors} bad rows in all; the first {MAX_ROW_ERRORS} are listed"}
        )
    return rows, duplicates


def _sampled_rows(count: int) -> set[int]:
    """The rows rendered whatever their variables: the first few and an even spread."""
    step = max(1, count // SAMPLE_SPREAD)
    return set(range(min(count, SAMPLE_HEAD))) | set(range(0, count, step))


def _check_variables(
    rows: list[RecipientRow],
    names: dict[str, set[str]],
    sources: dict[str, str | None],
    errors: list[dict],
    budget: RenderBudget,
) -> None:
    """Refuse recipients that lack a variable a template needs, and templates over the render budget.

    The referenced names come from the template's AST; only a sample of rows (the first ones
    and an even spread) and those missing one of them are rendered for real, so
    ``{% if x is defined %}`` guards work and the common case costs a set difference per row.
    Each row renders under the sender's per-recipient budget, and all of them within
    ``VALIDATION_RENDER_S``: once that is spent, the remaining rows are left to the sender,
    which fails a recipient whose render overruns.
    """
    needed = set().union(*names.values()) if names else set()
    needed -= BUILTIN_VARIABLES
    sampled = _sampled_rows(len(rows))
    reported = 0
    spent_by = time.monotonic() + VALIDATION_RENDER_S
    for index, row in enumerate(rows):
        if index not in sampled and needed.issubset(row.vars):
            continue
        left = spent_by - time.monotonic()
        if left <= 0:
            return
        context = recipient_context(row.email, row.vars)
        with metered(RenderBudget(min(budget.seconds, left), budget.max_chars)):
            for field_name, source in sources.items():
                if source is None:
                    continue
                try:
                    render_field(source, context, html=field_name == "html")
                except RenderBudgetExceeded as exc:
                    if exc.timed_out and left < budget.seconds:
                        return  # creation's own time ran out, not this row's budget
                    errors.append({"field": field_name, "row": row.row, "error": f"render budget exceeded: {exc}"})
                    return
                except SecurityError as exc:
                    # The sandbox refuses the template itself, whoever receives it.
                    errors.append({"field": field_name, "error": f"template is not allowed: {exc}"})
                    return
                except TemplateError as exc:
                    # A missing variable, or one of the wrong type: this row's data.
                    reported += 1
                    if reported <= MAX_ROW_ERRORS:
                        errors.append({"row": row.row, "email": row.email, "error": f"{field_name}: {exc}"})
                    break
