"""SMTP_RELAY_URL: how a relay URL becomes the sender's SMTP settings, and what is refused."""

from __future__ import annotations

import pytest

from chalicelib.settings import Settings
from infra.local.relay import Relay, RelayUrlError, ignored_smtp_variables, parse_relay_url, redact_url
from infra.local.runtime import RuntimeConfig, StartupError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # Credentials: a submission port, STARTTLS on 587.
        ("smtp://user:pass@mail.example.test:587", Relay("mail.example.test", 587, "user", "pass", "starttls")),
        ("smtp://user:pass@mail.example.test", Relay("mail.example.test", 587, "user", "pass", "starttls")),
        # smtps: implicit TLS on 465.
        ("smtps://user:pass@mail.example.test", Relay("mail.example.test", 465, "user", "pass", "tls")),
        ("SMTPS://user:pass@Mail.Example.Test:2465", Relay("mail.example.test", 2465, "user", "pass", "tls")),
        # No credentials: a plain relay on 25.
        ("smtp://relay.example.test:25", Relay("relay.example.test", 25, "", "", "none")),
        ("smtp://relay.example.test", Relay("relay.example.test", 25, "", "", "none")),
        ("smtp://relay.example.test/", Relay("relay.example.test", 25, "", "", "none")),
        # The query says otherwise.
        ("smtp://u:p@127.0.0.1:2525?tls=none", Relay("127.0.0.1", 2525, "u", "p", "none")),
        ("smtp://relay.example.test?tls=starttls", Relay("relay.example.test", 587, "", "", "starttls")),
        ("smtp://u:p@h?tls=tls", Relay("h", 465, "u", "p", "tls")),
        ("smtp://u:p@h:587?verify=false", Relay("h", 587, "u", "p", "starttls", verify_tls=False)),
        ("smtps://u:p@h?tls=TLS&verify=0", Relay("h", 465, "u", "p", "tls", verify_tls=False)),
        ("smtp://[::1]:2525", Relay("::1", 2525, "", "", "none")),
        ("  smtp://relay.example.test:25  ", Relay("relay.example.test", 25, "", "", "none")),
    ],
)
def test_a_relay_url_becomes_host_port_credentials_and_tls(url: str, expected: Relay) -> None:
    assert parse_relay_url(url) == expected


def test_user_and_password_are_percent_decoded() -> None:
    relay = parse_relay_url("smtp://news%40shop.test:p%40ss%2Fw%3Ard%23%3F%25@mail.shop.test")

    assert (relay.username, relay.password) == ("news@shop.test", "p@ss/w:rd#?%")


def test_the_settings_env_points_the_sender_at_the_relay() -> None:
    relay = parse_relay_url("smtps://news%40shop.test:s3cret@mail.shop.test?verify=false")

    settings = Settings.from_env(relay.settings_env())

    assert (settings.smtp_host, settings.smtp_port) == ("mail.shop.test", 465)
    assert (settings.smtp_username, settings.smtp_password) == ("news@shop.test", "s3cret")
    assert (settings.smtp_tls, settings.smtp_verify_tls) == ("tls", False)


def test_a_plain_relay_sends_no_credentials() -> None:
    settings = Settings.from_env(parse_relay_url("smtp://relay.example.test").settings_env())

    assert (settings.smtp_username, settings.smtp_password, settings.smtp_tls) == ("", "", "none")
    assert settings.smtp_verify_tls is True


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("http://mail.example.test", "smtp:// or smtps://"),
        ("mail.example.test:587", "smtp:// or smtps://"),
        ("", "smtp:// or smtps://"),
        ("smtp://", "no host"),
        ("smtp://user:pass@:587", "no host"),
        ("smtp://mail.example.test:0", "port"),
        ("smtp://mail.example.test:70000", "port"),
        ("smtp://mail.example.test:smtp", "port"),
        ("smtp://user:pa/ss@mail.example.test", "percent-encode"),
        ("smtp://mail.example.test/INBOX", "no path"),
        ("smtp://mail.example.test#x", "no path or fragment"),
        ("smtp://user@mail.example.test", "both a user and a password"),
        ("smtp://user:@mail.example.test", "both a user and a password"),
        ("smtp://:pass@mail.example.test", "both a user and a password"),
        ("smtp://mail.example.test?tls=ssl", "tls must be one of none, starttls, tls"),
        ("smtps://u:p@mail.example.test?tls=starttls", "implicit TLS"),
        ("smtp://mail.example.test?verify=maybe", "verify must be true or false"),
        ("smtp://mail.example.test?timeout=5", "unknown option timeout"),
        ("smtp://mail.example.test?tls=none&tls=tls", "given twice"),
        ("smtp://mail.example.test?tls", "malformed query"),
        ("smtp://[::1", "not a URL"),
    ],
)
def test_a_bad_url_is_refused_with_one_line_naming_the_variable(url: str, says: str) -> None:
    with pytest.raises(RelayUrlError) as info:
        parse_relay_url(url)

    message = str(info.value)
    assert message.startswith("SMTP_RELAY_URL") and says in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "url", ["smtp://user:hunter2@mail.example.test/INBOX", "smtp://user:hunter2@mail.example.test?tls=ssl"]
)
def test_an_error_never_shows_the_password(url: str) -> None:
    with pytest.raises(RelayUrlError) as info:
        parse_relay_url(url)

    assert "hunter2" not in str(info.value)


def test_the_banner_line_hides_the_password() -> None:
    assert parse_relay_url("smtp://news:hunter2@mail.shop.test").describe() == (
        "smtp://news:***@mail.shop.test:587 (STARTTLS)"
    )
    assert parse_relay_url("smtps://news:x@mail.shop.test?verify=false").describe() == (
        "smtps://news:***@mail.shop.test:465 (implicit TLS, certificate not verified)"
    )
    assert parse_relay_url("smtp://[::1]:2525").describe() == "smtp://[::1]:2525 (no TLS)"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "imaps://bounces%40shop.test:hunter2@mail.shop.test:993/INBOX",
            "imaps://bounces%40shop.test:***@mail.shop.test:993/INBOX",
        ),
        ("maildir:/var/mail/bounces", "maildir:/var/mail/bounces"),
        ("imap://mail.shop.test/INBOX", "imap://mail.shop.test/INBOX"),
    ],
)
def test_redact_url_hides_only_the_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_superseded_smtp_variables_are_named() -> None:
    environ = {"SMTP_HOST": "mail.shop.test", "SMTP_PORT": "587", "SMTP_TLS": "tls", "SMTP_PASSWORD": " "}

    assert ignored_smtp_variables(environ, relay_set=False) == ["SMTP_HOST", "SMTP_PORT"]
    assert ignored_smtp_variables(environ, relay_set=True) == ["SMTP_HOST", "SMTP_PORT", "SMTP_TLS"]


def test_the_stand_in_port_has_its_own_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_PORT", "587")  # the sender's setting: not the stand-in's port
    monkeypatch.setenv("SMTP_STANDIN_PORT", "2525")
    monkeypatch.setenv("SMTP_RELAY_URL", " smtp://relay.example.test ")
    monkeypatch.setenv("REPORT_MAILBOX_URL", "maildir:/tmp/bounces")

    config = RuntimeConfig.from_env()

    assert config.smtp_port == 2525
    assert config.relay_url == "smtp://relay.example.test"
    assert config.report_mailbox_url == "maildir:/tmp/bounces"


def test_a_port_that_is_not_a_number_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "eighty")

    with pytest.raises(StartupError, match="API_PORT"):
        RuntimeConfig.from_env()


def test_a_relay_needs_no_stand_in_port_and_an_endpoint_no_emulator_port() -> None:
    config = RuntimeConfig(api_port=8000, ws_port=8001, ws_management_port=0, smtp_port=8025, emulator_port=4566)
    assert config.ports_needed() == {
        "API_PORT": 8000,
        "WS_PORT": 8001,
        "SMTP_STANDIN_PORT": 8025,
        "EMULATOR_PORT": 4566,
    }

    elsewhere = RuntimeConfig(
        api_port=8000, smtp_port=8025, emulator_port=4566, relay_url="smtp://relay.test", endpoint_url="http://aws:4566"
    )
    assert elsewhere.ports_needed() == {"API_PORT": 8000}
