"""chalicelib.item_size: sizes as DynamoDB's developer guide computes them, and the creation budgets."""

from __future__ import annotations

from decimal import Decimal

import pytest

from chalicelib.campaigns import check_sizes
from chalicelib.errors import InvalidCampaign
from chalicelib.item_size import (
    MAX_ITEM_BYTES,
    RECIPIENT_GROWTH_BYTES,
    check_item,
    item_size,
    json_attribute,
    number_size,
    value_size,
)
from chalicelib.models import Campaign, Recipient
from chalicelib.recipients import MAX_HISTORY_REPLY, MAX_REPLY
from chalicelib.validation import CampaignRequest, RecipientRow

pytestmark = pytest.mark.unit


def test_strings_count_utf8_bytes_of_name_and_value() -> None:
    # "name" is 4 bytes; "Zoë" is 4 bytes in UTF-8 (ë takes 2); an emoji takes 4.
    assert item_size({"name": "Zoë"}) == 4 + 4
    assert item_size({"n": "\N{GRINNING FACE}"}) == 1 + 4


def test_numbers_take_one_byte_per_two_significant_digits_plus_one() -> None:
    assert number_size(0) == 1
    assert number_size(7) == 2
    assert number_size(12) == 2
    assert number_size(123) == 3
    assert number_size(1200000) == 2  # trailing zeros trimmed: "12"
    assert number_size(Decimal("0.0012")) == 2  # leading zeros trimmed: "12"
    assert number_size(-98765) == 4


def test_null_bool_list_and_map_overheads() -> None:
    assert value_size(None) == 1 and value_size(True) == 1
    assert value_size([]) == 3 and value_size({}) == 3
    # a list: 3 bytes, plus per element 1 byte and the element
    assert value_size(["ab", "c"]) == 3 + (1 + 2) + (1 + 1)
    # a map: 3 bytes, plus per element 1 byte, the key and the value
    assert value_size({"k": "vv"}) == 3 + 1 + 1 + 2
    assert value_size({"a", "bc"}) == 3  # a string set: its members


def test_absent_attributes_are_not_stored() -> None:
    assert item_size({"a": "x", "reply_to": None}) == 2


def test_vars_are_sized_as_pynamodb_stores_them_with_ascii_escapes() -> None:
    stored = json_attribute({"name": "Zoë"})
    assert stored == '{"name": "Zo\\u00eb"}'
    assert value_size(stored) == len(stored)


def test_an_item_that_fits_with_room_to_grow_passes() -> None:
    assert check_item({"campaign_id": "c" * 32, "vars": "x" * 1000}, RECIPIENT_GROWTH_BYTES) is None


def test_an_item_over_the_budget_names_the_attributes_to_shrink() -> None:
    budget = MAX_ITEM_BYTES - RECIPIENT_GROWTH_BYTES
    oversize = check_item({"campaign_id": "c" * 32, "vars": "x" * budget}, RECIPIENT_GROWTH_BYTES)
    assert oversize is not None
    assert oversize.budget == budget
    assert oversize.size == len("campaign_id") + 32 + len("vars") + budget
    assert [name for name, _ in oversize.largest] == ["vars"]


def test_the_recipient_margin_covers_a_full_history_and_reply() -> None:
    # What sending can add at its largest must fit in the margin, or a grown item could still hit 400 KB.
    history_entry = 1 + len("2026-11-28T12:00:00.000000+00:00 suppressed ") + 4 * MAX_HISTORY_REPLY
    reply = len("last_reply") + 4 * MAX_REPLY
    assert RECIPIENT_GROWTH_BYTES >= reply + 3 + len("history") + 40 * history_entry
    assert RECIPIENT_GROWTH_BYTES < MAX_ITEM_BYTES // 4  # and still leaves most of the item to the vars


def _request(rows: tuple[RecipientRow, ...], html: str | None = None) -> CampaignRequest:
    return CampaignRequest(
        name="n",
        from_addr="a@example.com",
        subject="s",
        text="t",
        html=html,
        reply_to=None,
        recipients=rows,
        duplicates_dropped=0,
    )


def _models(request: CampaignRequest) -> tuple[Campaign, list[Recipient]]:
    campaign = Campaign(
        "c" * 32,
        tenant="acme",
        name=request.name,
        from_addr=request.from_addr,
        subject=request.subject,
        text=request.text,
        html=request.html,
        created_at="2026-11-28T12:00:00+00:00",
    )
    recipients = [
        Recipient("c" * 32, r.email, vars=r.vars or None, status="pending", attempts=0) for r in request.recipients
    ]
    return campaign, recipients


def test_creation_names_each_row_whose_item_would_be_too_large_as_stored() -> None:
    # 32,000 emoji are 128,000 bytes of UTF-8 in the request, but 384,000 as pynamodb stores them (\\ud83d\\ude00).
    rows = (
        RecipientRow("a@example.org", {"x": "ok"}, row=0),
        RecipientRow("b@example.org", {"x": "\N{GRINNING FACE}" * 32_000}, row=3),
        RecipientRow("c@example.org", {"x": "y" * 100_000}, row=4),
    )
    request = _request(rows)
    with pytest.raises(InvalidCampaign) as refused:
        check_sizes(*_models(request), request)
    assert [(e["row"], e["email"]) for e in refused.value.errors] == [(3, "b@example.org")]


def test_creation_names_the_body_field_that_makes_the_campaign_too_large() -> None:
    request = _request((RecipientRow("a@example.org", row=0),), html="<p>" + "x" * 500_000)
    with pytest.raises(InvalidCampaign) as refused:
        check_sizes(*_models(request), request)
    assert [e["field"] for e in refused.value.errors] == ["html"]
