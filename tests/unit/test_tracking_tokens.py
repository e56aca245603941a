"""Tracking tokens: they round-trip, and an altered, truncated or foreign-signed one does not verify."""

from __future__ import annotations

import pytest

from chalicelib.tracking_tokens import (
    CLICK,
    OPEN,
    REPLY,
    UNSUBSCRIBE,
    TrackingToken,
    mint,
    mint_address,
    verify,
    verify_address,
)

pytestmark = pytest.mark.unit

SECRET = "stage-secret"
CAMPAIGN = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    "token",
    [
        TrackingToken(CLICK, CAMPAIGN, "ann@example.org", rendered_at=1_790_000_000, link=3),
        TrackingToken(OPEN, CAMPAIGN, "josé@xn--exmple-cua.com", rendered_at=1),
        TrackingToken(UNSUBSCRIBE, CAMPAIGN, "a+b@example.org"),
    ],
)
def test_a_minted_token_verifies_to_what_was_minted(token: TrackingToken) -> None:
    raw = mint(token, SECRET)

    assert verify(raw, SECRET) == token
    assert raw.replace("-", "").replace("_", "").isalnum()  # URL- and local-part-safe


def test_every_single_character_change_is_refused() -> None:
    raw = mint(TrackingToken(CLICK, CAMPAIGN, "ann@example.org", link=1), SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    for i, ch in enumerate(raw):
        altered = raw[:i] + alphabet[(alphabet.index(ch) + 1) % len(alphabet)] + raw[i + 1 :]
        if i < len(raw) - 1:
            assert verify(altered, SECRET) is None, i
        else:
            # The last character may differ only in padding bits, which decode to the same bytes.
            assert verify(altered, SECRET) in (None, verify(raw, SECRET))


@pytest.mark.parametrize("raw", ["", "x", "%%%", "A" * 600, "é" * 10, "AAAA" * 10])
def test_garbage_is_refused(raw: str) -> None:
    assert verify(raw, SECRET) is None


def test_another_stages_secret_does_not_verify() -> None:
    raw = mint(TrackingToken(OPEN, CAMPAIGN, "ann@example.org"), SECRET)

    assert verify(raw, "another-secret") is None
    assert verify(raw[:-2], SECRET) is None


# -- address tokens (plus-addresses) ---------------------------------------------------------


@pytest.mark.parametrize("email", ["ann@example.org", "josé@xn--exmple-cua.com", "x" * 200 + "@example.org"])
def test_an_address_token_is_46_characters_and_names_its_recipient_by_digest(email: str) -> None:
    raw = mint_address(REPLY, CAMPAIGN, email, SECRET)
    token = verify_address(raw, SECRET)

    assert len(raw) == 46 and raw.replace("-", "").replace("_", "").isalnum()
    assert len(f"bounces+{raw}".encode()) <= 64
    assert token is not None and (token.kind, token.campaign_id) == (REPLY, CAMPAIGN)
    assert token.names(email) and not token.names("other@example.org")


def test_an_altered_or_foreign_address_token_is_refused() -> None:
    raw = mint_address(UNSUBSCRIBE, CAMPAIGN, "ann@example.org", SECRET)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

    for i, ch in enumerate(raw[:-1]):  # the last character carries padding bits
        assert verify_address(raw[:i] + alphabet[(alphabet.index(ch) + 1) % 64] + raw[i + 1 :], SECRET) is None, i
    assert verify_address(raw, "another-secret") is None
    assert verify_address(raw.lower(), SECRET) is None
    assert verify_address(raw[:-1], SECRET) is None


def test_address_and_url_tokens_are_not_interchangeable() -> None:
    """The MAC inputs are domain-separated: neither kind of tag verifies the other kind of token."""
    address = mint_address(UNSUBSCRIBE, CAMPAIGN, "ann@example.org", SECRET)
    url = mint(TrackingToken(UNSUBSCRIBE, CAMPAIGN, "ann@example.org"), SECRET)

    assert verify(address, SECRET) is None
    assert verify_address(url, SECRET) is None
