"""Per-recipient rendering of subject and bodies in a Jinja2 sandbox, and MIME assembly.

``build_message`` assembles a recipient's mail with the standard library's
``EmailMessage``, which parses and re-folds every header it is given: most of a
sender's own CPU per mail. ``message_bytes`` gives the same mail as bytes far
cheaper: the parts every recipient shares (From, Reply-To, the MIME structure)
are serialized once per campaign and container (``MessageSkeleton``), and a
recipient's own parts are written directly when they need no encoding (ASCII
headers that fit on a line, bodies whose lines fit); anything else goes the
``EmailMessage`` way.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateRuntimeError, meta
from jinja2.sandbox import SandboxedEnvironment

_text_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
_html_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=True)


@dataclass(frozen=True)
class CampaignTemplates:
    """The templates and fixed headers a campaign renders for every recipient."""

    campaign_id: str
    from_addr: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None = None


def message_id(campaign_id: str, email: str, domain: str) -> str:
    """The Message-ID a recipient's mail always carries, whichever attempt sends it."""
    digest = hashlib.sha256(f"{campaign_id}\0{email}".encode()).hexdigest()[:32]
    return f"<{campaign_id}.{digest}@{domain}>"


@lru_cache(maxsize=256)
def _compiled(source: str, html: bool) -> Any:
    return (_html_env if html else _text_env).from_string(source)


def compile_errors(templates: dict[str, str | None]) -> tuple[list[dict], dict[str, set[str]]]:
    """Syntax errors per field, and the variables each template refers to."""
    errors: list[dict] = []
    names: dict[str, set[str]] = {}
    for field, source in templates.items():
        if source is None:
            continue
        env = _html_env if field == "html" else _text_env
        try:
            names[field] = meta.find_undeclared_variables(env.parse(source))
            _compiled(source, field == "html")
        except TemplateError as exc:
            errors.append({"field": field, "error": f"template does not compile: {exc}"})
    return errors, names


def render_field(source: str, context: dict[str, Any], html: bool = False) -> str:
    """Render one template for one recipient; raises jinja2.TemplateError on any failure."""
    try:
        return _compiled(source, html).render(context)
    except TemplateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a template's own runtime error (1/0, "a" + 1) is a template error
        raise TemplateRuntimeError(f"{type(exc).__name__}: {exc}") from exc


def recipient_context(email: str, variables: dict[str, Any] | None) -> dict[str, Any]:
    """What a template sees for one recipient: their vars plus ``email``."""
    context = dict(variables or {})
    context.setdefault("email", email)
    return context


def build_message(
    templates: CampaignTemplates,
    email: str,
    variables: dict[str, Any] | None,
    message_id_domain: str,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    """The complete MIME message for one recipient."""
    context = recipient_context(email, variables)
    msg = EmailMessage()
    msg["From"] = templates.from_addr
    msg["To"] = email
    # A variable could smuggle a line break into the subject; headers must stay one line.
    subject = render_field(templates.subject, context)
    msg["Subject"] = " ".join(subject.splitlines())
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(templates.campaign_id, email, message_id_domain)
    if templates.reply_to:
        msg["Reply-To"] = templates.reply_to
    msg["X-Mailpipe-Campaign"] = templates.campaign_id
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    text = render_field(templates.text, context) if templates.text is not None else None
    html = render_field(templates.html, context, html=True) if templates.html is not None else None
    if text is not None:
        msg.set_content(text)
        if html is not None:
            msg.add_alternative(html, subtype="html")
    else:
        msg.set_content(html or "", subtype="html")
    return msg


# -- the same mail as bytes, from a skeleton built once per campaign ------------------------------

_POLICY = policy.default  # what EmailMessage.as_bytes() serializes with: "\n" line ends, 78-column lines
_SIMPLE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")
_PRINTABLE_ASCII = re.compile(r"[ -~]*")


def _fold(name: str, value: str) -> bytes:
    """One header as EmailMessage serializes it (encoded words, folding)."""
    return _POLICY.fold_binary(*_POLICY.header_store_parse(name, value))


def _header(name: str, value: str) -> bytes:
    """One header line: written directly when plain ASCII that fits, else folded by the policy."""
    if (
        len(name) + 2 + len(value) <= _POLICY.max_line_length
        and _PRINTABLE_ASCII.fullmatch(value)
        and "=?" not in value
    ):
        return f"{name}: {value}\n".encode("ascii")
    return _fold(name, value)


def _body(text: str) -> tuple[str, bytes] | None:
    """(Content-Transfer-Encoding, body) as EmailMessage.set_content writes utf-8 text; None when it needs QP/base64."""
    lines = text.encode("utf-8").splitlines()
    if any(len(line) > _POLICY.max_line_length for line in lines):
        return None
    body = b"\n".join(lines) + b"\n"
    return ("7bit" if body.isascii() else "8bit"), body


class MessageSkeleton:
    """What every recipient's mail of one campaign shares, serialized once."""

    def __init__(self, templates: CampaignTemplates) -> None:
        self.templates = templates
        self.from_header = _fold("From", templates.from_addr)
        self.tail_headers = (_fold("Reply-To", templates.reply_to) if templates.reply_to else b"") + _fold(
            "X-Mailpipe-Campaign", templates.campaign_id
        )
        # One boundary per campaign (EmailMessage draws one per mail); a body that happens
        # to contain it falls back to EmailMessage, which draws another.
        self.boundary = f"==============={secrets.randbelow(10**19):019d}=="

    def render(self, email: str, variables: dict[str, Any] | None, message_id_domain: str) -> bytes | None:
        """The recipient's mail, or None where only EmailMessage can write it; raises TemplateError."""
        t = self.templates
        if not _SIMPLE_ADDRESS.fullmatch(email):
            return None
        context = recipient_context(email, variables)
        subject = " ".join(render_field(t.subject, context).splitlines())
        text = render_field(t.text, context) if t.text is not None else None
        html = render_field(t.html, context, html=True) if t.html is not None else None
        parts = []
        for source, subtype in ((text, "plain"), (html, "html")):
            if source is not None:
                encoded = _body(source)
                if encoded is None:
                    return None
                parts.append((subtype, *encoded))
        if not parts:
            parts.append(("html", *(_body("") or ("7bit", b"\n"))))
        head = b"".join(
            (
                self.from_header,
                f"To: {email}\n".encode("ascii"),
                _header("Subject", subject),
                f"Date: {_date_now()}\n".encode("ascii"),
                f"Message-ID: {message_id(t.campaign_id, email, message_id_domain)}\n".encode("ascii"),
                self.tail_headers,
            )
        )
        if len(parts) == 1:
            subtype, cte, body = parts[0]
            return head + _part_headers(subtype, cte) + b"MIME-Version: 1.0\n\n" + body
        boundary = self.boundary.encode("ascii")
        if any(boundary in body for _, _, body in parts):
            return None
        out = [
            head,
            b'MIME-Version: 1.0\nContent-Type: multipart/alternative;\n boundary="' + boundary + b'"\n',
        ]
        for index, (subtype, cte, body) in enumerate(parts):
            # As EmailMessage.add_alternative writes it: the second part repeats MIME-Version.
            extra = b"MIME-Version: 1.0\n" if index else b""
            out.append(b"\n--" + boundary + b"\n" + _part_headers(subtype, cte) + extra + b"\n" + body)
        out.append(b"\n--" + boundary + b"--\n")
        return b"".join(out)


def _part_headers(subtype: str, cte: str) -> bytes:
    return f'Content-Type: text/{subtype}; charset="utf-8"\nContent-Transfer-Encoding: {cte}\n'.encode("ascii")


_date_cache: tuple[int, str] = (0, "")


def _date_now() -> str:
    """The Date header's value, as EmailMessage writes it (numeric zone), computed once a second."""
    global _date_cache
    now = int(time.time())
    second, text = _date_cache
    if second != now:
        text = formatdate(now, usegmt=True).removesuffix("GMT") + "+0000"
        _date_cache = (now, text)
    return text


@lru_cache(maxsize=64)
def _skeleton(templates: CampaignTemplates) -> MessageSkeleton:
    return MessageSkeleton(templates)


def message_bytes(templates: CampaignTemplates, email: str, variables: dict[str, Any] | None, domain: str) -> bytes:
    """The recipient's complete mail as bytes: ``build_message(...).as_bytes()``, cheaper.

    Raises jinja2.TemplateError exactly when ``build_message`` would.
    """
    rendered = _skeleton(templates).render(email, variables, domain)
    if rendered is not None:
        return rendered
    if not email.isascii():
        # A non-ASCII local part: no encoded word may stand in an address, so the headers are
        # RFC 6532 UTF-8, and the sender sends the mail with SMTPUTF8 or not at all.
        return build_message(templates, email, variables, domain).as_bytes(policy=_POLICY.clone(utf8=True))
    return build_message(templates, email, variables, domain).as_bytes()
