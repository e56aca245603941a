"""Per-recipient rendering of subject and bodies in a Jinja2 sandbox, and MIME assembly."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
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
