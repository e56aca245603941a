"""GET /dashboard's security headers: a strict CSP built from the page it serves.

Reading the page file is the only I/O here. The hashes are recomputed from the body
actually served, so a page edit that the policy does not follow fails here (and in
the browser test, which loads the page under this policy).
"""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from chalicelib import api
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit

WS_URL = "wss://abc123.execute-api.eu-west-1.amazonaws.com/prod"


def served(websocket_url: str) -> tuple[str, dict[str, str]]:
    response = api.dashboard(Settings(websocket_url=websocket_url))
    assert response.status_code == 200
    return response.body, response.headers


def policy(headers: dict[str, str]) -> dict[str, list[str]]:
    directives = {}
    for directive in headers["Content-Security-Policy"].split(";"):
        name, *sources = directive.split()
        assert name not in directives, f"{name} given twice"
        directives[name] = sources
    return directives


def sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_the_page_is_framed_by_nobody_sniffed_by_nobody_and_sends_no_referrer() -> None:
    _, headers = served(WS_URL)
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_only_the_served_inline_script_and_stylesheet_run() -> None:
    body, headers = served(WS_URL)
    csp = policy(headers)
    scripts = re.findall(r"<script>(.*?)</script>", body, re.S)
    styles = re.findall(r"<style>(.*?)</style>", body, re.S)
    assert len(scripts) == 1 and len(styles) == 1
    # Hashed after the WebSocket URL went in: the hash is of the script as served.
    assert f'const WS_URL = "{WS_URL}";' in scripts[0]
    assert csp["script-src"] == [sha256(scripts[0])]
    assert csp["style-src"] == csp["style-src-elem"] == [sha256(styles[0])]
    assert csp["style-src-attr"] == ["'unsafe-inline'"]  # data-driven style attributes; see dashboard_page.py
    assert csp["default-src"] == ["'none'"]
    assert csp["img-src"] == ["'self'", "data:"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert csp["frame-ancestors"] == ["'none'"]


def test_the_page_connects_to_its_own_origin_and_the_websocket_api() -> None:
    _, headers = served(WS_URL)
    assert policy(headers)["connect-src"] == ["'self'", "wss://abc123.execute-api.eu-west-1.amazonaws.com"]
    _, local = served("ws://127.0.0.1:8765")
    assert policy(local)["connect-src"] == ["'self'", "ws://127.0.0.1:8765"]


def test_without_a_websocket_url_only_the_own_origin_is_reachable() -> None:
    body, headers = served("")
    assert policy(headers)["connect-src"] == ["'self'"]
    assert 'const WS_URL = "";' in body


def test_a_hostile_websocket_url_neither_widens_the_policy_nor_escapes_the_script() -> None:
    hostile = 'wss://x.example; script-src *"</script><script>alert(1)</script>'
    body, headers = served(hostile)
    csp = policy(headers)
    assert csp["connect-src"] == ["'self'"]
    assert csp["script-src"] != ["*"] and len(csp["script-src"]) == 1
    assert body.count("</script>") == 1
    assert body.count("<script>") == 1


def test_the_page_has_nothing_the_policy_would_block() -> None:
    body, _ = served(WS_URL)
    markup = re.sub(r"<script>.*?</script>", "", body, flags=re.S)
    assert not re.search(r"<script\s[^>]*src=", markup), "an external script needs its origin in script-src"
    assert not re.search(r"\son[a-z]+\s*=", markup), "inline event handlers never run under this policy"
    assert not re.search(r"<link[^>]+rel=\"?stylesheet", markup), "an external stylesheet needs style-src"
    assert not re.search(r"javascript:", markup)
