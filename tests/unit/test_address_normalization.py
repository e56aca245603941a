"""Addresses at creation: one canonical form (lowercase, IDNA A-label domain) for keys, RCPT and To:."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.validation import normalize_address, parse_campaign_request

pytestmark = pytest.mark.unit


def body(recipients: list[Any], **overrides: Any) -> dict[str, Any]:
    """A valid create-campaign body with these recipients."""
    return {
        "name": "n",
        "from": "News <news@shop.example.com>",
        "subject": "Hi {{ email }}",
        "text": "Hello",
        "recipients": recipients,
        **overrides,
    }


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("jose@exämple.com", "jose@xn--exmple-cua.com"),
        ("Jose@EXÄMPLE.com", "jose@xn--exmple-cua.com"),
        ("JOSE@XN--EXMPLE-CUA.COM", "jose@xn--exmple-cua.com"),  # the punycode spelling is the same mailbox
        ("anna@faß.de", "anna@xn--fa-hia.de"),  # IDNA 2008; IDNA 2003 would make it fass.de, another domain
        ("ivan@пример.рф", "ivan@xn--e1afmkfd.xn--p1ai"),
        ("José@example.org", "josé@example.org"),  # RFC 6531 local part: kept, sent with SMTPUTF8
        ("ñoño@exämple.com", "ñoño@xn--exmple-cua.com"),
        ("Alice@Example.COM", "alice@example.com"),
    ],
)
def test_normalize_address_gives_the_canonical_form(raw: str, canonical: str) -> None:
    assert normalize_address(raw) == canonical


def test_composed_and_decomposed_local_parts_are_one_address() -> None:
    assert (
        normalize_address("jose\u0301@example.org") == normalize_address("jos\u00e9@example.org") == "josé@example.org"
    )


def test_special_use_domains_keep_their_canonical_form() -> None:
    assert normalize_address("Eve@Exämple.Local", allow_special_use_domains=True) == "eve@xn--exmple-cua.local"
    assert normalize_address("José@mail.test", allow_special_use_domains=True) == "josé@mail.test"


@pytest.mark.parametrize(
    "raw",
    [
        "jose@exa mple.com",
        "jose@-exämple.com",  # a label may not start with a hyphen
        "jose@xn--zz.com",  # not a valid A-label
        "jose@ex..com",
        "jo se@example.com",
        "jose@",
        "exämple.com",
        "jose@example.com\r\nRCPT TO:<x@y.z>",
    ],
)
def test_addresses_that_are_not_addresses_are_refused(raw: str) -> None:
    with pytest.raises(InvalidCampaign) as info:
        parse_campaign_request(body([raw]), max_recipients=10)

    assert [e["row"] for e in info.value.errors] == [0]
    assert info.value.errors[0]["error"].startswith("invalid address")


def test_idn_and_utf8_recipients_are_accepted_in_canonical_form_and_deduplicated() -> None:
    request = parse_campaign_request(
        body(["jose@exämple.com", "JOSE@xn--exmple-cua.com", "José@example.org", "ann@example.org"]),
        max_recipients=10,
    )

    assert [r.email for r in request.recipients] == ["jose@xn--exmple-cua.com", "josé@example.org", "ann@example.org"]
    assert request.duplicates_dropped == 1


def test_a_non_ascii_local_part_in_from_is_refused() -> None:
    # From is on every mail: each would need SMTPUTF8.
    with pytest.raises(InvalidCampaign) as info:
        parse_campaign_request(body(["ann@example.org"], **{"from": "José <josé@shop.example.com>"}), 10)

    assert [e["field"] for e in info.value.errors] == ["from"]


def test_an_idn_domain_in_from_and_reply_to_is_kept_as_a_labels() -> None:
    request = parse_campaign_request(
        body(["ann@example.org"], **{"from": "Café News <news@exämple.com>", "reply_to": "help@exämple.com"}), 10
    )

    assert request.from_addr.endswith("<news@xn--exmple-cua.com>")
    assert "Caf" in request.from_addr
    assert request.reply_to == "help@xn--exmple-cua.com"


def test_an_ascii_from_is_kept_exactly_as_given() -> None:
    request = parse_campaign_request(
        body(["ann@example.org"], **{"from": "Bénédicte Café <news@shop.example.com>"}), 10
    )

    assert request.from_addr == "Bénédicte Café <news@shop.example.com>"
