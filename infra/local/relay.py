"""Bring your own relay: ``SMTP_RELAY_URL`` read into the sender's SMTP settings.

``smtp://user:password@mail.example.test`` is a submission port: 587 with STARTTLS.
``smtps://user:password@mail.example.test`` is implicit TLS on 465.
``smtp://relay.example.test`` (no credentials) is a plain relay: port 25, no TLS.
The query may say otherwise: ``?tls=none|starttls|tls`` and ``?verify=false`` (do not
check the server's certificate, for a self-signed one). User and password are
percent-decoded, so a password with ``@``, ``/`` or ``:`` is written ``%40``, ``%2F``, ``%3A``.

Every error names the variable and never echoes the password.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

RELAY_VARIABLE = "SMTP_RELAY_URL"
TLS_MODES = ("none", "starttls", "tls")
DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}
_TLS_NAMES = {"none": "no TLS", "starttls": "STARTTLS", "tls": "implicit TLS"}
_ENCODE_HINT = " (percent-encode '/', '?', '#' in a password as %2F, %3F, %23)"
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
# What the Lambda-side settings would otherwise take from the environment; `run` sets
# them itself (from SMTP_RELAY_URL, or to reach the stand-in).
_SENDER_VARIABLES = ("SMTP_HOST", "SMTP_PORT", "SMTP_USERNAME", "SMTP_PASSWORD")
_RELAY_ONLY_VARIABLES = ("SMTP_TLS", "SMTP_VERIFY_TLS")


class RelayUrlError(ValueError):
    """SMTP_RELAY_URL cannot be used; the message names it and hides the password."""


@dataclass(frozen=True)
class Relay:
    """Where and how the sender submits mail when it is not the stand-in."""

    host: str
    port: int
    username: str = ""
    password: str = ""
    tls: str = "starttls"  # starttls | tls | none, as chalicelib.settings.Settings.smtp_tls
    verify_tls: bool = True

    def settings_env(self) -> dict[str, str]:
        """The chalicelib settings (environment variable names) that point the sender here."""
        return {
            "SMTP_HOST": self.host,
            "SMTP_PORT": str(self.port),
            "SMTP_USERNAME": self.username,
            "SMTP_PASSWORD": self.password,
            "SMTP_TLS": self.tls,
            "SMTP_VERIFY_TLS": "true" if self.verify_tls else "false",
        }

    def describe(self) -> str:
        """One line for the banner, password hidden."""
        scheme = "smtps" if self.tls == "tls" else "smtp"
        who = f"{self.username}:***@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        how = _TLS_NAMES[self.tls]
        if self.tls != "none" and not self.verify_tls:
            how += ", certificate not verified"
        return f"{scheme}://{who}{host}:{self.port} ({how})"


def parse_relay_url(url: str) -> Relay:
    """Read an ``smtp://`` or ``smtps://`` URL; raise RelayUrlError saying what is wrong."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as exc:  # e.g. an unclosed "[" in the host
        raise RelayUrlError(f"{RELAY_VARIABLE} is not a URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("smtp", "smtps"):
        shown = f"{scheme}://" if scheme else "none"
        raise RelayUrlError(
            f"{RELAY_VARIABLE} must start with smtp:// or smtps:// (scheme: {shown}), "
            "e.g. smtp://user:password@mail.example.test:587"
        )
    if not parts.hostname:
        raise RelayUrlError(f"{RELAY_VARIABLE} names no host: {redact_url(url)}")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        # A raw "/", "?" or "#" in a password ends the host part early, and shows up here.
        raise RelayUrlError(f"{RELAY_VARIABLE} has a port that is not a number from 1 to 65535{_ENCODE_HINT}")
    if parts.path not in ("", "/") or parts.fragment:
        raise RelayUrlError(f"{RELAY_VARIABLE} takes no path or fragment{_ENCODE_HINT}: {redact_url(url)}")
    username = unquote(parts.username) if parts.username is not None else ""
    password = unquote(parts.password) if parts.password is not None else ""
    if bool(username) != bool(password):
        raise RelayUrlError(f"{RELAY_VARIABLE} needs both a user and a password, or neither: {redact_url(url)}")

    options = _options(parts.query)
    tls = options.get("tls") or ("tls" if scheme == "smtps" else "starttls" if username else "none")
    if tls not in TLS_MODES:
        raise RelayUrlError(f"{RELAY_VARIABLE}: tls must be one of {', '.join(TLS_MODES)}, got {tls!r}")
    if scheme == "smtps" and tls != "tls":
        raise RelayUrlError(f"{RELAY_VARIABLE}: smtps:// is implicit TLS; for tls={tls} write smtp://")
    verify = options.get("verify", "true").lower()
    if verify not in _TRUE | _FALSE:
        raise RelayUrlError(f"{RELAY_VARIABLE}: verify must be true or false, got {verify!r}")
    return Relay(
        host=parts.hostname,
        port=port or DEFAULT_PORTS[tls],
        username=username,
        password=password,
        tls=tls,
        verify_tls=verify in _TRUE,
    )


def _options(query: str) -> dict[str, str]:
    try:
        parsed = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RelayUrlError(f"{RELAY_VARIABLE} has a malformed query: use ?tls=…&verify=…") from None
    unknown = sorted(set(parsed) - {"tls", "verify"})
    if unknown:
        raise RelayUrlError(f"{RELAY_VARIABLE}: unknown option {', '.join(unknown)} (known: tls, verify)")
    repeated = sorted(name for name, values in parsed.items() if len(values) > 1)
    if repeated:
        raise RelayUrlError(f"{RELAY_VARIABLE}: option {', '.join(repeated)} given twice")
    return {name: values[0].strip().lower() for name, values in parsed.items()}


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (for banners and errors)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def ignored_smtp_variables(environ: Mapping[str, str], relay_set: bool) -> list[str]:
    """SMTP_* settings in the environment that `run` overrides, so the user can be told.

    The stand-in's own port is SMTP_STANDIN_PORT, and a real relay is SMTP_RELAY_URL;
    SMTP_TLS and SMTP_VERIFY_TLS still apply to the stand-in but not to a relay URL.
    """
    names = _SENDER_VARIABLES + (_RELAY_ONLY_VARIABLES if relay_set else ())
    return [name for name in names if environ.get(name, "").strip()]
