"""Per-recipient rendering of subject and bodies in a Jinja2 sandbox, and MIME assembly.

``build_message`` assembles a recipient's mail with the standard library's
``EmailMessage``, which parses and re-folds every header it is given: most of a
sender's own CPU per mail. ``message_bytes`` gives the same mail as bytes far
cheaper: the parts every recipient shares (From, Reply-To, the MIME structure)
are serialized once per campaign and container (``MessageSkeleton``), and a
recipient's own parts are written directly when they need no encoding (ASCII
headers that fit on a line, bodies whose lines fit); anything else goes the
``EmailMessage`` way.

With ``CampaignTemplates.tracking`` set, every mail also carries what issue 10's engagement
tracking needs (``personalize``): ``List-Unsubscribe`` and ``List-Unsubscribe-Post``
(RFC 2369, RFC 8058), an ``unsubscribe_url`` template variable and a footer for a body that
does not use it, a 1×1 open pixel in the html part, links rewritten to per-recipient click
URLs (only those in ``campaign_links``, the list a click's route redirects to), and a
plus-addressed ``Reply-To`` when the campaign has none. Every URL carries a signed token
(``chalicelib.tracking_tokens``) that holds all its route needs; the plus-addresses (the
mailto and the Reply-To) carry the compact address token instead, so that their local part
stays within RFC 5321's 64 octets (``bounces+<46 characters>``: 54).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import secrets
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.utils import formatdate
from functools import lru_cache
from html import unescape
from typing import Any

from jinja2 import StrictUndefined, TemplateError, TemplateRuntimeError, meta, nodes, pass_context
from jinja2.runtime import Context, markup_join, str_join
from jinja2.sandbox import MAX_RANGE, SandboxedEnvironment
from jinja2.visitor import NodeTransformer
from markupsafe import Markup

from chalicelib import tracking_tokens
from chalicelib.tracking_tokens import TrackingToken

logger = logging.getLogger(__name__)

# -- the render budget ---------------------------------------------------------------------------
#
# A template is code a tenant gives us, run on a sender shared with other tenants. A Python
# thread cannot be stopped from outside, so a render stops itself: the sandbox's hooks (every
# call, attribute access, intercepted operator, loop step and output) check a deadline and
# count the characters produced, and refuse up front an operation whose result would not fit
# (9**9**9, 'a'*10**9, 'a'.center(10**9)): those run in C, where no check can interrupt them.

DEFAULT_RENDER_SECONDS = 1.0
DEFAULT_RENDER_MAX_CHARS = 5_000_000  # per recipient, every field; the request itself is at most 5 MB
MAX_INT_BITS = 65_536  # an int Python could not even print (4,300 digits) is far below this
_LOOP_CHECK_EVERY = 256  # loop steps between clock reads: a step costs well under a microsecond
_CHUNK_CLOCK_EVERY = 16  # output chunks between clock reads (the hooks read it too)
_AMPLIFYING_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join"})
_WIDE_SPEC = re.compile(r"\d{8,}")  # a width or precision of 10**7 or more, in a %-format or format spec


class RenderBudgetExceeded(TemplateRuntimeError):
    """A render ran out of time or output, or asked for an operation too large to attempt.

    ``field`` names the template (``subject``, ``text``, ``html``) once known; ``timed_out``
    tells a deadline from a size refusal.
    """

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.field: str | None = None


@dataclass(frozen=True)
class RenderBudget:
    """Time and output allowed for rendering one recipient's mail (all its fields together)."""

    seconds: float = DEFAULT_RENDER_SECONDS
    max_chars: int = DEFAULT_RENDER_MAX_CHARS


_DEFAULT_BUDGET = RenderBudget()


class _Meter:
    """The running budget of the render in progress on this thread."""

    __slots__ = ("deadline", "left", "seconds")

    def __init__(self, budget: RenderBudget) -> None:
        self.seconds = budget.seconds
        self.deadline = time.monotonic() + budget.seconds
        self.left = budget.max_chars


class _Unmetered:
    """Outside a render (Jinja folds constants at compile time): size refusals only, no clock."""

    deadline = float("inf")
    left = DEFAULT_RENDER_MAX_CHARS
    seconds = float("inf")


class _Local(threading.local):
    meter: _Meter | None = None


_UNMETERED = _Unmetered()
_local = _Local()


def _meter() -> _Meter | _Unmetered:
    return _local.meter or _UNMETERED


@contextmanager
def metered(budget: RenderBudget) -> Iterator[None]:
    """Run the renders inside under one budget (one recipient's fields share it)."""
    previous = _local.meter
    _local.meter = _Meter(budget)
    try:
        yield
    finally:
        _local.meter = previous


def _tick() -> None:
    meter = _local.meter
    if meter is not None and time.monotonic() > meter.deadline:
        raise _timed_out(meter)


def _timed_out(meter: _Meter) -> RenderBudgetExceeded:
    return RenderBudgetExceeded(f"took longer than {meter.seconds:g} s", timed_out=True)


def _too_big(what: str, size: int) -> RenderBudgetExceeded:
    return RenderBudgetExceeded(f"{what} would be {size:,} long, over the {_meter().left:,} left")


def _fits(what: str, size: int) -> None:
    if size > _meter().left:
        raise _too_big(what, size)


def _spend(chars: int) -> None:
    meter = _local.meter
    if meter is None:
        return
    meter.left -= chars
    if meter.left < 0:
        raise _over_size()


def _over_size() -> RenderBudgetExceeded:
    return RenderBudgetExceeded("output is over the size budget")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse an operator whose result would be too large to compute (it runs in C, unstoppable)."""
    if operator == "**":
        if _is_int(left) and _is_int(right) and right > 0 and abs(left) > 1:
            if left.bit_length() * right > MAX_INT_BITS:
                raise RenderBudgetExceeded(f"a power of about {left.bit_length() * right:,} bits is too large")
    elif operator == "*":
        if _is_int(left) and _is_int(right):
            if left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise RenderBudgetExceeded("a product that large is refused")
        elif _is_int(right) and isinstance(left, (str, list, tuple)):
            _fits("a repetition", len(left) * right)
        elif _is_int(left) and isinstance(right, (str, list, tuple)):
            _fits("a repetition", len(right) * left)
    elif operator == "+":
        if isinstance(left, (str, list, tuple)) and isinstance(right, (str, list, tuple)):
            _fits("a concatenation", len(left) + len(right))
    elif operator == "%" and isinstance(left, str):
        _check_format(left, right if isinstance(right, tuple) else (right,), {})


def _check_format(spec: str, args: Iterable[Any], kwargs: dict[str, Any]) -> None:
    """A format string's widths and precisions, literal or taken from the arguments, must fit."""
    if _WIDE_SPEC.search(spec):
        raise RenderBudgetExceeded("a format width or precision that large is refused")
    limit = _meter().left
    if any(_is_int(a) and a > limit for a in (*args, *kwargs.values())) and ("*" in spec or "{" in spec):
        raise RenderBudgetExceeded("a format width or precision that large is refused")


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Size the result of a str method that can grow its input before running it."""
    if name in ("center", "ljust", "rjust", "zfill"):
        width = args[0] if args else kwargs.get("width", 0)
        if _is_int(width):
            _fits(f"str.{name}", width)
    elif name == "expandtabs":
        size = args[0] if args else kwargs.get("tabsize", 8)
        if _is_int(size):
            _fits("str.expandtabs", len(text) + text.count("\t") * size)
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = args[2] if len(args) > 2 and _is_int(args[2]) else kwargs.get("count", -1)
        hits = text.count(old) if old else len(text) + 1
        if _is_int(count) and count >= 0:
            hits = min(hits, count)
        _fits("str.replace", len(text) + hits * (len(new) - len(old)))
    elif name == "join" and args and hasattr(args[0], "__len__"):
        _fits("str.join", len(text) * max(0, len(args[0]) - 1))
    elif name in ("format", "format_map"):
        _check_format(
            text, args, kwargs if name == "format" else (args[0] if args and isinstance(args[0], dict) else {})
        )


def _metered_filter(name: str, func: Any) -> Any:
    """A built-in filter, with its count and width arguments held to the budget."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _tick()
        skip = 2 if hasattr(func, "jinja_pass_arg") else 1  # (context|eval_ctx|environment,) value
        value, rest = (args[skip - 1] if len(args) >= skip else None), args[skip:]
        limit = _meter().left
        if any(_is_int(a) and a > limit for a in (*rest, *kwargs.values())):
            raise RenderBudgetExceeded(f"|{name} with an argument that large is refused")
        if isinstance(value, str):
            if name == "replace":
                _check_str_method(value, "replace", rest, kwargs)
            elif name == "indent":
                width = rest[0] if rest else kwargs.get("width", 4)
                prefix = width if isinstance(width, str) else " " * width if _is_int(width) else ""
                _fits("|indent", len(value) + (value.count("\n") + 1) * len(prefix))
            elif name == "format":
                _check_format(value, rest, kwargs)
        if name == "join" and rest and isinstance(rest[0], str) and hasattr(value, "__len__"):
            _fits("|join", len(rest[0]) * max(0, len(value) - 1))
        return func(*args, **kwargs)

    return wrapper


@pass_context
def _metered_iter(context: Context, iterable: Any) -> Iterator[Any]:
    """What a ``{% for %}`` walks: the clock is read every few steps, so empty nested loops stop too."""
    steps = 0
    for item in iterable:
        steps += 1
        if steps % _LOOP_CHECK_EVERY == 0:
            _tick()
        yield item


@pass_context
def _metered_concat(context: Context, parts: list[Any]) -> str:
    """``a ~ b``: sized before it is joined."""
    _tick()
    _fits("a ~ concatenation", sum(len(p) if isinstance(p, str) else len(str(p)) for p in parts))
    return markup_join(parts) if context.eval_ctx.autoescape else str_join(parts)


@pass_context
def _metered_output(context: Context, value: Any, literal: bool = False) -> Any:
    """Every ``{{ }}`` and piece of template text as it is produced, in macros and blocks too."""
    _spend(len(value) if isinstance(value, str) else len(str(value)))
    if literal and context.eval_ctx.autoescape:
        return Markup(value)  # template text is trusted markup, as Jinja itself outputs it
    return value


def _metered_range(*args: int) -> range:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise RenderBudgetExceeded(f"range() of {len(rng):,} items is refused (at most {MAX_RANGE:,})")
    return rng


def _metered_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    if not (_is_int(n) and _is_int(max)) or n * max > _meter().left:
        raise RenderBudgetExceeded("lipsum() that large is refused")
    from jinja2.utils import generate_lorem_ipsum

    return generate_lorem_ipsum(n=n, html=html, min=min, max=max)


class _MeterTemplate(NodeTransformer):
    """Routes a parsed template's loops, ``~`` and buffered outputs through the metered helpers.

    Output at the top level streams out of ``generate()`` and is counted there; output
    inside a macro, call, filter or ``{% set %}`` block is buffered until the block ends,
    so each piece of it is counted as it is produced.
    """

    _BUFFERED = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)

    def __init__(self) -> None:
        self.buffered = 0

    def generic_visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        """Visit children, knowing whether they sit inside a buffered block."""
        inside = isinstance(node, self._BUFFERED)
        self.buffered += inside
        try:
            return super().generic_visit(node, *args, **kwargs)
        finally:
            self.buffered -= inside

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, "_metered_iter", [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        parts = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(parts, "_metered_concat", [], [], None, None, lineno=node.lineno)

    def visit_Output(self, node: nodes.Output) -> nodes.Node:
        self.generic_visit(node)
        if not self.buffered:
            return node
        wrapped: list[nodes.Expr] = []
        for child in node.nodes:
            if isinstance(child, nodes.TemplateData):
                literal = nodes.Const(child.data, lineno=child.lineno)
                wrapped.append(
                    nodes.Filter(literal, "_metered_output", [nodes.Const(True)], [], None, None, lineno=child.lineno)
                )
            else:
                wrapped.append(nodes.Filter(child, "_metered_output", [], [], None, None, lineno=child.lineno))
        node.nodes = wrapped
        return node


class BudgetedEnvironment(SandboxedEnvironment):
    """Jinja's sandbox with a render budget: time and output, checked from inside the render."""

    # Intercepted operators are also never folded at compile time: unintercepted, Jinja's
    # optimizer computed {{ 9**(9**9) }} while compiling, inside the API's validation.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.filters = {name: _metered_filter(name, f) for name, f in self.filters.items()}
        self.filters.update(
            _metered_iter=_metered_iter, _metered_concat=_metered_concat, _metered_output=_metered_output
        )
        self.globals.update(range=_metered_range, lipsum=_metered_lipsum)

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        return _MeterTemplate().visit(super()._parse(source, name, filename))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        """An intercepted operator: sized before it runs."""
        _tick()
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        """Any call in a template (methods, macros, globals)."""
        _tick()
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        name = getattr(target, "__name__", "")
        if isinstance(owner, str) and (name in _AMPLIFYING_STR_METHODS or name in ("format", "format_map")):
            _check_str_method(owner, name, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``x.y``; also a clock check, since it is what a busy template does most."""
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        """``x[y]``, with a clock check."""
        _tick()
        return super().getitem(obj, argument)


_text_env = BudgetedEnvironment(undefined=StrictUndefined, autoescape=False)
_html_env = BudgetedEnvironment(undefined=StrictUndefined, autoescape=True)


@dataclass(frozen=True)
class Tracking:
    """How a campaign's mails point back at the tracking routes (issue 10)."""

    secret: str  # settings.tracking_secret: signs every token
    base_url: str  # settings.public_api_url; empty: a mailto-only unsubscribe, no pixel, no click URLs
    report_address: str  # settings.bounce_address: its mailbox takes the mailto unsubscribes and the replies
    opens: bool = True
    clicks: bool = True


@dataclass(frozen=True)
class CampaignTemplates:
    """The templates and fixed headers a campaign renders for every recipient."""

    campaign_id: str
    from_addr: str
    subject: str
    text: str | None
    html: str | None
    reply_to: str | None = None
    tracking: Tracking | None = None  # None: a mail with no tracking at all (tests, benches)


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


def render_field(source: str, context: dict[str, Any], html: bool = False, budget: RenderBudget | None = None) -> str:
    """Render one template for one recipient; raises jinja2.TemplateError on any failure.

    Inside ``metered(...)`` it spends that budget; otherwise it gets one of its own
    (``budget``, or the default). A budget overrun raises ``RenderBudgetExceeded``.
    """
    meter = _local.meter
    if meter is None:
        with metered(budget or RenderBudget()):
            return render_field(source, context, html)
    try:
        # Streamed, so a body that grows past the budget stops there, not at the end. The
        # template's own generator, not generate(): one generator layer less per chunk.
        template = _compiled(source, html)
        chunks: list[str] = []
        clock = time.monotonic
        for index, chunk in enumerate(template.root_render_func(template.new_context(context))):
            chunks.append(chunk)
            meter.left -= len(chunk)
            if meter.left < 0:
                raise _over_size()
            if not index % _CHUNK_CLOCK_EVERY and clock() > meter.deadline:
                raise _timed_out(meter)
        return "".join(chunks)
    except TemplateError:
        raise
    except MemoryError as exc:
        raise RenderBudgetExceeded("ran out of memory") from exc
    except Exception as exc:  # noqa: BLE001 - a template's own runtime error (1/0, "a" + 1) is a template error
        raise TemplateRuntimeError(f"{type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class RenderedFields:
    """A recipient's rendered subject (one line) and bodies, and their own extra headers."""

    subject: str
    text: str | None
    html: str | None
    headers: tuple[tuple[str, str], ...] = ()


def _render_named(field: str, source: str, context: dict[str, Any]) -> str:
    try:
        return render_field(source, context, html=field == "html")
    except RenderBudgetExceeded as exc:
        exc.field = exc.field or field
        raise


def render_fields(
    templates: CampaignTemplates, email: str, variables: dict[str, Any] | None, budget: RenderBudget | None = None
) -> RenderedFields:
    """Render subject, text and html for one recipient under one budget.

    Raises jinja2.TemplateError; ``RenderBudgetExceeded.field`` names the field that overran.
    """
    links = _tracked(templates) if templates.tracking is not None else None
    urls = links.urls_for(email) if links is not None else None
    context = recipient_context(email, variables, (urls.unsubscribe or "") if urls is not None else "")
    previous, _local.meter = _local.meter, _Meter(budget or _DEFAULT_BUDGET)  # metered(), without its overhead
    try:
        # A variable could smuggle a line break into the subject; headers must stay one line.
        subject = " ".join(_render_named("subject", templates.subject, context).splitlines())
        text = _render_named("text", templates.text, context) if templates.text is not None else None
        html = _render_named("html", templates.html, context) if templates.html is not None else None
    finally:
        _local.meter = previous
    if links is None or urls is None:
        return RenderedFields(subject, text, html)
    return links.personalize(RenderedFields(subject, text, html), urls, email)


# Variables every template may use without a recipient supplying them.
BUILTIN_VARIABLES = frozenset({"email", "unsubscribe_url"})


def recipient_context(email: str, variables: dict[str, Any] | None, unsubscribe_url: str = "") -> dict[str, Any]:
    """What a template sees for one recipient: their vars plus ``email`` and ``unsubscribe_url``."""
    context = dict(variables or {})
    context.setdefault("email", email)
    # Ours, never the recipient's: a row cannot point the unsubscribe link elsewhere.
    context["unsubscribe_url"] = unsubscribe_url
    return context


def build_message(
    templates: CampaignTemplates,
    email: str,
    variables: dict[str, Any] | None,
    message_id_domain: str,
    extra_headers: dict[str, str] | None = None,
    budget: RenderBudget | None = None,
) -> EmailMessage:
    """The complete MIME message for one recipient."""
    rendered = render_fields(templates, email, variables, budget)
    return _assemble(templates, email, rendered, message_id_domain, extra_headers)


def _assemble(
    templates: CampaignTemplates,
    email: str,
    rendered: RenderedFields,
    message_id_domain: str,
    extra_headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage(policy=_POLICY)
    msg["From"] = templates.from_addr
    msg["To"] = email
    msg["Subject"] = rendered.subject
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = message_id(templates.campaign_id, email, message_id_domain)
    if templates.reply_to:
        msg["Reply-To"] = templates.reply_to
    msg["X-Mailpipe-Campaign"] = templates.campaign_id
    for name, value in rendered.headers:
        msg.set_raw(name, value)  # already folded, ASCII: no encoded words in a URL or an address
    for name, value in (extra_headers or {}).items():
        msg[name] = value
    text, html = rendered.text, rendered.html
    if text is not None:
        msg.set_content(text, cte=_long_line_cte(text))
        if html is not None:
            msg.add_alternative(html, subtype="html", cte=_long_line_cte(html))
    else:
        msg.set_content(html or "", subtype="html", cte=_long_line_cte(html or ""))
    return msg


def _long_line_cte(text: str) -> str | None:
    """7bit/8bit while every line fits SMTP's 998 (tracking URLs make lines long); else None: QP or base64."""
    lines = text.encode("utf-8").splitlines()
    if any(len(line) > MAX_BODY_LINE for line in lines):
        return None
    return "7bit" if text.isascii() else "8bit"


# -- the same mail as bytes, from a skeleton built once per campaign ------------------------------

# What the mails serialize with: "\n" line ends, 78-column headers; a raw header (set_raw: the
# tracking headers, folded by us) is written as given, never refolded into encoded words.
_POLICY = policy.default.clone(refold_source="none")
MAX_BODY_LINE = 998  # RFC 5322 2.1.1: a line's hard limit, CRLF excluded
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
    """(Content-Transfer-Encoding, body) as ``_assemble`` writes utf-8 text; None when it needs QP/base64."""
    lines = text.encode("utf-8").splitlines()
    if any(len(line) > MAX_BODY_LINE for line in lines):
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
        if not _SIMPLE_ADDRESS.fullmatch(email):
            return None
        return self.assemble(email, render_fields(self.templates, email, variables), message_id_domain)

    def assemble(self, email: str, rendered: RenderedFields, message_id_domain: str) -> bytes | None:
        """The mail from already rendered fields, or None where only EmailMessage can write it."""
        t = self.templates
        if not _SIMPLE_ADDRESS.fullmatch(email):
            return None
        subject, text, html = rendered.subject, rendered.text, rendered.html
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
                *(f"{name}: {value}\n".encode("ascii") for name, value in rendered.headers),
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


def message_bytes(
    templates: CampaignTemplates,
    email: str,
    variables: dict[str, Any] | None,
    domain: str,
    budget: RenderBudget | None = None,
) -> bytes:
    """The recipient's complete mail as bytes: ``build_message(...).as_bytes()``, cheaper.

    Raises jinja2.TemplateError exactly when ``build_message`` would; rendering stays
    within ``budget`` (default: ``RenderBudget()``), else ``RenderBudgetExceeded``.
    """
    rendered = render_fields(templates, email, variables, budget)
    fast = _skeleton(templates).assemble(email, rendered, domain)
    if fast is not None:
        return fast
    if not email.isascii():
        # A non-ASCII local part: no encoded word may stand in an address, so the headers are
        # RFC 6532 UTF-8, and the sender sends the mail with SMTPUTF8 or not at all.
        return _assemble(templates, email, rendered, domain).as_bytes(policy=_POLICY.clone(utf8=True))
    return _assemble(templates, email, rendered, domain).as_bytes()


# -- engagement tracking: unsubscribe headers and footer, open pixel, click URLs -----------------

# An <a>/<area> href, quoted either way. Good enough for the mail html tenants write; a link
# this misses simply stays as written (untracked), it never breaks.
_HREF = re.compile(r"""(<(?:a|area)\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
# A URL in a text part: up to whitespace or a character that cannot end one in prose.
_TEXT_URL = re.compile(r"""https?://[^\s<>"'{}]+""", re.IGNORECASE)
# The same in a template's source, where it may run into template syntax ({{ … }}): such a
# URL is built per recipient and is not one of the campaign's links.
_SOURCE_URL = re.compile(r"""https?://[^\s<>"']+""", re.IGNORECASE)
_TRAILING_PUNCTUATION = ".,;:!?)]"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_TEMPLATE_SYNTAX = ("{{", "{%", "{#")


def _trim_url(url: str) -> str:
    return url.rstrip(_TRAILING_PUNCTUATION)


def _trackable(url: str) -> bool:
    """Only static http(s) links: not mailto:, tel:, #anchors, nor links built from variables."""
    lowered = url.lower()
    return lowered.startswith(("http://", "https://")) and not any(mark in url for mark in _TEMPLATE_SYNTAX)


def campaign_links(text: str | None, html: str | None) -> tuple[str, ...]:
    """The campaign's trackable links, index → URL: what a click's route may redirect to.

    Derived from the stored templates alone (text part first, then html, each URL once), so
    the sender that rewrites links and the route that answers a click agree without storing
    anything more. A link built from a variable is not in the list and is never rewritten.
    """
    seen: dict[str, None] = {}
    for match in _SOURCE_URL.finditer(text or ""):
        url = _trim_url(match.group(0))
        if _trackable(url):
            seen.setdefault(url, None)
    for match in _HREF.finditer(html or ""):
        url = unescape(match.group(3)).strip()
        if _trackable(url):
            seen.setdefault(url, None)
    return tuple(seen)[: tracking_tokens.MAX_LINKS]


@dataclass(frozen=True)
class RecipientUrls:
    """The tracking URLs of one recipient's mail."""

    rendered_at: int
    unsubscribe: str | None  # the https one-click URL, else the mailto; None: neither (no footer, no header)
    unsubscribe_mailto: str | None  # None when the report address cannot take a token (see _token_address)
    open_pixel: str | None
    reply_to: str | None


def _plus_address(address: str, token: str) -> str:
    local, _, domain = address.rpartition("@")
    local = local.split("+", 1)[0]
    return f"{local}+{token}@{domain}"


_warned_long_local: set[str] = set()


def _token_address(address: str) -> bool:
    """Whether ``<local>+<address token>@domain`` fits RFC 5321's 64-octet local part.

    A default ``bounces@…`` leaves room to spare (54 octets). A report address whose local part
    is longer than 17 octets cannot carry a token: its mails then have no mailto unsubscribe and
    no tracked Reply-To (replies still match by In-Reply-To), which is logged once per address.
    """
    local = address.rpartition("@")[0].split("+", 1)[0]
    fits = len(local.encode()) + 1 + tracking_tokens.ADDRESS_TOKEN_CHARS <= tracking_tokens.MAX_LOCAL_PART_OCTETS
    if not fits and address not in _warned_long_local:
        _warned_long_local.add(address)
        logger.warning(
            "report address %s: its local part is too long for a plus-address token (RFC 5321: 64 octets);"
            " mails carry no mailto unsubscribe and no tracked Reply-To",
            address,
        )
    return fits


class _TrackedLinks:
    """A campaign's tracking, prepared once per campaign and container."""

    def __init__(self, templates: CampaignTemplates) -> None:
        assert templates.tracking is not None
        self.campaign_id = templates.campaign_id
        self.tracking = templates.tracking
        self.base = self.tracking.base_url.rstrip("/")
        self.plus_addressed = _token_address(self.tracking.report_address)
        self.reply_tracked = not templates.reply_to and self.plus_addressed
        links = campaign_links(templates.text, templates.html) if self.tracking.clicks and self.base else ()
        self.link_index = {url: index for index, url in enumerate(links)}

    def _token(self, kind: str, email: str, rendered_at: int, link: int | None = None) -> str:
        return tracking_tokens.mint(
            TrackingToken(kind, self.campaign_id, email, rendered_at, link), self.tracking.secret
        )

    def _address(self, kind: str, email: str) -> str:
        token = tracking_tokens.mint_address(kind, self.campaign_id, email, self.tracking.secret)
        return _plus_address(self.tracking.report_address, token)

    def urls_for(self, email: str, now: float | None = None) -> RecipientUrls:
        """The recipient's unsubscribe, pixel and reply addresses (its click URLs are minted as found)."""
        at = int(time.time() if now is None else now)
        mailto = "mailto:" + self._address(tracking_tokens.UNSUBSCRIBE, email) if self.plus_addressed else None
        return RecipientUrls(
            rendered_at=at,
            unsubscribe=f"{self.base}/u/{self._token(tracking_tokens.UNSUBSCRIBE, email, at)}" if self.base else mailto,
            unsubscribe_mailto=mailto,
            open_pixel=(
                f"{self.base}/o/{self._token(tracking_tokens.OPEN, email, at)}"
                if self.base and self.tracking.opens
                else None
            ),
            reply_to=self._address(tracking_tokens.REPLY, email) if self.reply_tracked else None,
        )

    def personalize(self, rendered: RenderedFields, urls: RecipientUrls, email: str) -> RenderedFields:
        """Rewritten links, a footer where the body has no unsubscribe link, the pixel, the headers."""
        text, html = rendered.text, rendered.html
        clicks: dict[int, str] = {}
        if text is not None:
            if self.link_index:
                text = _TEXT_URL.sub(lambda m: self._text_link(m.group(0), email, urls, clicks), text)
            if urls.unsubscribe and urls.unsubscribe not in text:
                text = text.rstrip("\n") + f"\n\n--\nUnsubscribe: {urls.unsubscribe}\n"
        if html is not None:
            if self.link_index:
                html = _HREF.sub(lambda m: self._html_link(m, email, urls, clicks), html)
            extra = ""
            if urls.unsubscribe and urls.unsubscribe not in html:
                extra += (
                    '<p style="font-size:12px;color:#666666"><a href="'
                    + urls.unsubscribe
                    + '">Unsubscribe</a> from these mails.</p>'
                )
            if urls.open_pixel:
                extra += f'<img src="{urls.open_pixel}" width="1" height="1" alt="" style="border:0">'
            if extra:
                html = _before_body_end(html, extra)
        headers: list[tuple[str, str]] = []
        if urls.reply_to:
            headers.append(("Reply-To", urls.reply_to))
        if urls.unsubscribe is None:
            pass  # neither a public URL nor a plus-address that fits: nothing to offer
        elif urls.unsubscribe == urls.unsubscribe_mailto:
            headers.append(("List-Unsubscribe", f"<{urls.unsubscribe_mailto}>"))
        else:
            # Folded after the comma by us: each URI alone is longer than a 78-column line.
            mailto = f",\n <{urls.unsubscribe_mailto}>" if urls.unsubscribe_mailto else ""
            headers.append(("List-Unsubscribe", f"<{urls.unsubscribe}>{mailto}"))
            headers.append(("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))
        return RenderedFields(rendered.subject, text, html, tuple(headers))

    def _click_url(self, index: int, email: str, urls: RecipientUrls, clicks: dict[int, str]) -> str:
        url = clicks.get(index)
        if url is None:
            token = self._token(tracking_tokens.CLICK, email, urls.rendered_at, index)
            url = clicks[index] = f"{self.base}/c/{token}"
        return url

    def _text_link(self, found: str, email: str, urls: RecipientUrls, clicks: dict[int, str]) -> str:
        url = _trim_url(found)
        index = self.link_index.get(url)
        if index is None:
            return found
        return self._click_url(index, email, urls, clicks) + found[len(url) :]

    def _html_link(self, match: re.Match[str], email: str, urls: RecipientUrls, clicks: dict[int, str]) -> str:
        index = self.link_index.get(unescape(match.group(3)).strip())
        if index is None:
            return match.group(0)
        quote = match.group(2)
        return f"{match.group(1)}{quote}{self._click_url(index, email, urls, clicks)}{quote}"


def _before_body_end(html: str, extra: str) -> str:
    ends = list(_BODY_END.finditer(html))
    if not ends:
        return html + extra
    at = ends[-1].start()
    return html[:at] + extra + html[at:]


@lru_cache(maxsize=64)
def _tracked(templates: CampaignTemplates) -> _TrackedLinks:
    return _TrackedLinks(templates)
