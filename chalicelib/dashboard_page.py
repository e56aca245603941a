"""The dashboard page and the security headers it is served with.

The Content-Security-Policy is strict and built from the page itself: its inline
script and stylesheet are allowed by their SHA-256 hashes (taken after the WebSocket
URL is written into the script, since that changes its hash), it may connect only to
its own origin (the REST API it fetches) and to the WebSocket API's origin, and
nothing else loads. Built once per container and WebSocket URL.

Style *attributes* are the one inline allowance (``style-src-attr 'unsafe-inline'``):
the page sets bar widths and series colours through ``style`` attributes whose values
change with the data, so no fixed hash can allow them. An injected style attribute
cannot fetch anything here (no ``url()`` source is allowed beyond the page's own
origin and ``data:`` images), so it cannot carry data out.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

PAGE = Path(__file__).parent / "dashboard" / "index.html"
WS_URL_PLACEHOLDER = "__MAILPIPE_WS_URL__"

# Inline elements only: a <script src=…> would need its origin allowed, not a hash.
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
_INLINE_STYLE = re.compile(r"<style>(.*?)</style>", re.S)
# What may stand in a CSP source: nothing that could end the directive or open another.
_ORIGIN_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass(frozen=True)
class DashboardPage:
    """The page as served: its HTML and its response headers."""

    html: str
    headers: tuple[tuple[str, str], ...]


def source_hash(text: str) -> str:
    """The CSP source expression allowing an inline element whose content is ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def websocket_origin(websocket_url: str) -> str | None:
    """``ws[s]://host[:port]`` of the WebSocket API, or None when the URL is not one."""
    parts = urlsplit(websocket_url)
    if parts.scheme not in ("ws", "wss") or not _ORIGIN_HOST.fullmatch(parts.netloc or ""):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def http_origin(url: str) -> str | None:
    """``http[s]://host[:port]`` of a URL, or None when it is not one."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not _ORIGIN_HOST.fullmatch(parts.netloc or ""):
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(html: str, websocket_url: str, upload_url: str = "") -> str:
    """The policy for ``html`` (the page as sent) talking to ``websocket_url`` and PUTting CSVs to ``upload_url``."""
    scripts = " ".join(source_hash(s) for s in _INLINE_SCRIPT.findall(html)) or "'none'"
    styles = " ".join(source_hash(s) for s in _INLINE_STYLE.findall(html)) or "'none'"
    connect = "'self'"  # the REST API: the page fetches relative paths of its own origin
    origin = websocket_origin(websocket_url)
    if origin:
        connect += " " + origin
    uploads = http_origin(upload_url)
    if uploads:
        connect += " " + uploads  # the imports bucket: the page PUTs CSVs to presigned URLs there
    directives = [
        "default-src 'none'",
        f"script-src {scripts}",
        # style-src is the fallback of browsers without the -elem/-attr split (they drop style attributes).
        f"style-src {styles}",
        f"style-src-elem {styles}",
        "style-src-attr 'unsafe-inline'",
        f"connect-src {connect}",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
    return "; ".join(directives)


@functools.lru_cache(maxsize=8)
def dashboard_page(websocket_url: str, upload_url: str = "") -> DashboardPage:
    """The page told where the WebSocket API is, with its security headers (``upload_url``: where CSVs go)."""
    # Written into a JS string literal: escaped as JSON, and "<" too so it cannot close the script.
    literal = json.dumps(websocket_url)[1:-1].replace("<", "\\u003c")
    html = PAGE.read_text(encoding="utf-8").replace(WS_URL_PLACEHOLDER, literal)
    headers = (
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Security-Policy", content_security_policy(html, websocket_url, upload_url)),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )
    return DashboardPage(html=html, headers=headers)
