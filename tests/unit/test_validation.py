"""parse_campaign_request: what a create-campaign body must hold, and how every problem is named."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.errors import InvalidCampaign, PayloadTooLarge
from chalicelib.settings import Settings
from chalicelib.validation import (
    MAX_NAME,
    MAX_ROW_ERRORS,
    CampaignRequest,
    RecipientRow,
    normalize_address,
    parse_campaign_request,
)

pytestmark = pytest.mark.unit

LIMIT = 100


def valid_body(**overrides: Any) -> dict[str, Any]:
    """A request that passes; each test spoils one part of it."""
    body: dict[str, Any] = {
        "name": "November newsletter",
        "from": "Shop News <news@shop.example.com>",
        "reply_to": "help@shop.example.com",
        "subject": "Hello {{ first_name }}",
        "text": "Hi {{ first_name }}, your code is {{ code }}.",
        "html": "<p>Hi {{ first_name }}, your code is <b>{{ code }}</b>.</p>",
        "recipients": [
            {"email": "alice@example.com", "vars": {"first_name": "Alice", "code": "A-1"}},
            {"email": "bob@example.org", "vars": {"first_name": "Bob", "code": "B-2"}},
        ],
    }
    body.update(overrides)
    return body


def errors_of(body: Any, max_recipients: int = LIMIT) -> list[dict]:
    """The error list a refused request carries."""
    with pytest.raises(InvalidCampaign) as info:
        parse_campaign_request(body, max_recipients)
    return info.value.errors


def field_errors(body: Any, name: str) -> list[str]:
    """The messages about one top-level field."""
    return [e["error"] for e in errors_of(body) if e.get("field") == name]


def test_valid_request_becomes_a_campaign_request() -> None:
    body = valid_body(name="  November newsletter  ")
    body["recipients"][0]["email"] = "Alice@Example.COM"

    request = parse_campaign_request(body, LIMIT)

    assert request == CampaignRequest(
        name="November newsletter",
        from_addr="Shop News <news@shop.example.com>",
        subject="Hello {{ first_name }}",
        text="Hi {{ first_name }}, your code is {{ code }}.",
        html="<p>Hi {{ first_name }}, your code is <b>{{ code }}</b>.</p>",
        reply_to="help@shop.example.com",
        recipients=(
            RecipientRow(email="alice@example.com", vars={"first_name": "Alice", "code": "A-1"}, row=0),
            RecipientRow(email="bob@example.org", vars={"first_name": "Bob", "code": "B-2"}, row=1),
        ),
        duplicates_dropped=0,
    )


def test_plain_string_recipients_and_text_only_body_are_accepted() -> None:
    body = valid_body(subject="News", text="Hello {{ email }}", html=None, reply_to=None)
    body["recipients"] = ["carol@example.net", "dave@example.com"]

    request = parse_campaign_request(body, LIMIT)

    assert [r.email for r in request.recipients] == ["carol@example.net", "dave@example.com"]
    assert [r.vars for r in request.recipients] == [{}, {}]
    assert request.html is None
    assert request.reply_to is None


def test_html_only_body_is_accepted() -> None:
    request = parse_campaign_request(valid_body(text=None), LIMIT)

    assert request.text is None
    assert request.html is not None


@pytest.mark.parametrize("name", [None, "", "   ", 42, ["x"]])
def test_missing_or_blank_or_non_string_name_is_required(name: Any) -> None:
    body = valid_body(name=name)
    if name is None:
        del body["name"]

    assert field_errors(body, "name") == ["required"]


def test_overlong_name_is_refused() -> None:
    assert field_errors(valid_body(name="n" * (MAX_NAME + 1)), "name") == [f"at most {MAX_NAME} characters"]


@pytest.mark.parametrize("field", ["from", "subject"])
@pytest.mark.parametrize("value", ["absent", None, ""])
def test_missing_from_and_subject_are_required(field: str, value: Any) -> None:
    body = valid_body()
    if value == "absent":
        del body[field]
    else:
        body[field] = value

    assert field_errors(body, field) == ["required"]


def test_reply_to_is_optional() -> None:
    body = valid_body()
    del body["reply_to"]

    assert parse_campaign_request(body, LIMIT).reply_to is None


@pytest.mark.parametrize("field", ["from", "subject", "reply_to"])
@pytest.mark.parametrize("breaker", ["\r", "\n", "\r\n"])
def test_line_breaks_in_header_fields_are_refused(field: str, breaker: str) -> None:
    values = {
        "from": f"news@shop.example.com{breaker}Bcc: victim@example.com",
        "subject": f"Hello{breaker}Bcc: victim@example.com",
        "reply_to": f"help@shop.example.com{breaker}X-Injected: 1",
    }

    assert field_errors(valid_body(**{field: values[field]}), field) == ["must not contain CR or LF"]


@pytest.mark.parametrize("field", ["from", "reply_to"])
@pytest.mark.parametrize("value", ["not an address", "news@", "Shop <news at shop>", "@shop.example.com"])
def test_invalid_mailbox_is_refused(field: str, value: str) -> None:
    messages = field_errors(valid_body(**{field: value}), field)

    assert len(messages) == 1
    assert messages[0].startswith("invalid address:")


@pytest.mark.parametrize(
    ("field", "value"),
    [("from", ["news@shop.example.com"]), ("subject", 42), ("reply_to", {"a": 1}), ("text", 7), ("html", ["<p>"])],
)
def test_non_string_fields_are_named(field: str, value: Any) -> None:
    assert "must be a string" in field_errors(valid_body(**{field: value}), field)


@pytest.mark.parametrize(("text", "html"), [("", ""), (None, None), ("", None)])
def test_empty_body_is_refused(text: Any, html: Any) -> None:
    assert field_errors(valid_body(text=text, html=html), "text") == ["text or html is required and must not be empty"]


@pytest.mark.parametrize(
    ("field", "source"),
    [
        ("subject", "Hello {{ first_name"),
        ("text", "{% if first_name %}unclosed"),
        ("html", "<p>{{ first_name | }}</p>"),
    ],
)
def test_template_that_does_not_compile_is_named(field: str, source: str) -> None:
    messages = field_errors(valid_body(**{field: source}), field)

    assert len(messages) == 1
    assert messages[0].startswith("template does not compile:")


def test_variable_missing_for_a_recipient_is_a_row_error_with_its_original_index() -> None:
    recipients = [
        {"email": "alice@example.com", "vars": {"first_name": "Alice", "code": "A-1"}},
        {"email": "ALICE@example.com", "vars": {}},  # duplicate: dropped before the variable check
        "not-an-address",  # bad row: listed, not rendered
        {"email": "bob@example.org", "vars": {"first_name": "Bob"}},  # lacks "code"
    ]

    errors = errors_of(valid_body(recipients=recipients))

    assert (errors[0]["row"], errors[0]["email"]) == (2, "not-an-address")
    assert len(errors) == 2
    row_error = errors[1]
    assert row_error["row"] == 3
    assert row_error["email"] == "bob@example.org"
    assert row_error["error"].startswith("text: ")  # subject only needs first_name; text is the first to fail
    assert "code" in row_error["error"]


def test_defined_guard_lets_a_recipient_without_the_variable_through() -> None:
    body = valid_body(
        subject="Hello{% if first_name is defined %} {{ first_name }}{% endif %}",
        text="Hi{% if first_name is defined %} {{ first_name }}{% endif %}.",
        html=None,
        recipients=[{"email": "alice@example.com", "vars": {"first_name": "Alice"}}, "bob@example.org"],
    )

    request = parse_campaign_request(body, LIMIT)

    assert [r.email for r in request.recipients] == ["alice@example.com", "bob@example.org"]


def test_email_is_always_available_to_templates() -> None:
    body = valid_body(subject="For {{ email }}", text="{{ email }}", html=None, recipients=["carol@example.net"])

    assert parse_campaign_request(body, LIMIT).recipients[0].email == "carol@example.net"


def test_bad_recipient_rows_are_listed_with_their_index() -> None:
    recipients = [
        "good@example.com",
        "not-an-email",
        {"email": 5},
        {"vars": {"first_name": "Nobody"}},
        {"email": "vars@example.com", "vars": ["not", "an", "object"]},
        42,
        {"email": ""},
    ]
    body = valid_body(subject="News", text="Hello", html=None, recipients=recipients)

    errors = errors_of(body)

    assert [(e["row"], e["email"]) for e in errors] == [
        (1, "not-an-email"),
        (2, None),
        (3, None),
        (4, "vars@example.com"),
        (5, None),
        (6, ""),
    ]
    assert errors[0]["error"].startswith("invalid address:")
    assert [e["error"] for e in errors[1:]] == [
        "email is required",
        "email is required",
        "vars must be an object",
        "email is required",
        "email is required",
    ]


def test_row_errors_are_capped_with_a_summary() -> None:
    recipients = ["ok@example.com"] + [f"bad-{i}" for i in range(MAX_ROW_ERRORS + 50)]
    body = valid_body(subject="News", text="Hello", html=None, recipients=recipients)

    errors = errors_of(body, max_recipients=len(recipients))

    rows = [e for e in errors if "row" in e]
    assert len(rows) == MAX_ROW_ERRORS
    assert rows[0]["row"] == 1
    assert rows[-1]["row"] == MAX_ROW_ERRORS
    assert errors[-1] == {
        "field": "recipients",
        "error": f"{MAX_ROW_ERRORS + 50} bad rows in all; the first {MAX_ROW_ERRORS} are listed",
    }


def test_duplicates_are_dropped_case_insensitively_and_counted() -> None:
    recipients = [
        {"email": "a@example.com", "vars": {"n": "first"}},
        {"email": "A@EXAMPLE.COM", "vars": {"n": "second"}},
        "b@example.com",
        "a@Example.Com",
        "B@example.COM",
    ]
    body = valid_body(subject="News", text="Hello", html=None, recipients=recipients)

    request = parse_campaign_request(body, LIMIT)

    assert [(r.email, r.row, r.vars) for r in request.recipients] == [
        ("a@example.com", 0, {"n": "first"}),
        ("b@example.com", 2, {}),
    ]
    assert request.duplicates_dropped == 3


@pytest.mark.parametrize("recipients", ["absent", None, [], "a@example.com", {"email": "a@example.com"}])
def test_recipients_must_be_a_non_empty_list(recipients: Any) -> None:
    body = valid_body()
    if recipients == "absent":
        del body["recipients"]
    else:
        body["recipients"] = recipients

    assert field_errors(body, "recipients") == ["must be a non-empty list"]


def test_too_many_recipients_is_payload_too_large() -> None:
    recipients = [f"r{i}@example.com" for i in range(4)]
    body = valid_body(subject="News", text="Hello", html=None, recipients=recipients)

    with pytest.raises(PayloadTooLarge, match="at most 3 recipients per campaign, got 4"):
        parse_campaign_request(body, max_recipients=3)


def test_exactly_the_recipient_limit_is_accepted() -> None:
    recipients = [f"r{i}@example.com" for i in range(3)]
    body = valid_body(subject="News", text="Hello", html=None, recipients=recipients)

    assert len(parse_campaign_request(body, max_recipients=3).recipients) == 3


@pytest.mark.parametrize("body", [None, [], "a string", 42, [valid_body()]])
def test_non_object_body_is_refused(body: Any) -> None:
    assert errors_of(body) == [{"field": "body", "error": "must be a JSON object"}]


def test_every_problem_is_reported_at_once() -> None:
    body = {
        "name": "",
        "from": "nobody",
        "reply_to": "x\ny",
        "subject": 3,
        "text": "",
        "recipients": ["ok@example.com", "broken"],
    }

    errors = errors_of(body)

    named = {e.get("field") for e in errors if "field" in e}
    assert named == {"name", "from", "reply_to", "subject", "text"}
    assert [e["row"] for e in errors if "row" in e] == [1]


def test_from_with_a_second_invalid_address_is_refused() -> None:
    assert field_errors(valid_body(**{"from": "news@shop.example.com, not an address"}), "from")


def test_variable_of_the_wrong_type_is_a_row_error_not_a_crash() -> None:
    body = valid_body(
        subject="News",
        text="{{ points + 10 }} points, {{ first_name }}",
        html=None,
        recipients=[
            {"email": "alice@example.com", "vars": {"points": 5, "first_name": "Alice"}},
            {"email": "bob@example.org", "vars": {"points": "five"}},  # lacks first_name, so it is rendered
        ],
    )

    errors = errors_of(body)

    assert [e["row"] for e in errors] == [1]


def test_template_the_sandbox_always_refuses_is_rejected() -> None:
    assert field_errors(valid_body(subject="{{ ''.__class__.__mro__ }}"), "subject")


PRIVATE_ADDRESSES = ["alice@mail.test", "Bob@Mailu.LOCAL", "carol@test", "dave@a.b.local"]


@pytest.mark.parametrize("address", PRIVATE_ADDRESSES)
def test_test_and_local_addresses_are_refused_by_default(address: str) -> None:
    body = valid_body(recipients=[address])

    (error,) = errors_of(body)

    assert error["row"] == 0 and error["error"].startswith("invalid address")


def test_test_and_local_addresses_pass_when_the_setting_allows_them() -> None:
    body = valid_body(
        subject="News",
        text="Hi {{ email }}",
        html=None,
        recipients=PRIVATE_ADDRESSES,
        **{"from": "News <news@mailu.local>", "reply_to": "help@mail.test"},
    )

    request = parse_campaign_request(body, LIMIT, allow_special_use_domains=True)

    assert [r.email for r in request.recipients] == [
        "alice@mail.test",
        "bob@mailu.local",
        "carol@test",
        "dave@a.b.local",
    ]
    assert (request.from_addr, request.reply_to) == ("News <news@mailu.local>", "help@mail.test")


@pytest.mark.parametrize("field", ["from", "reply_to"])
def test_sender_addresses_on_local_are_refused_by_default(field: str) -> None:
    assert field_errors(valid_body(**{field: "news@mailu.local"}), field)


@pytest.mark.parametrize(
    "address", ["x@host.invalid", "x@host.onion", "x@local", "x@mail.localhost", "no-at-sign.local", "a b@mail.local"]
)
def test_the_setting_still_refuses_other_special_use_names_and_bad_syntax(address: str) -> None:
    body = valid_body(recipients=[address])

    with pytest.raises(InvalidCampaign):
        parse_campaign_request(body, LIMIT, allow_special_use_domains=True)


def test_a_local_address_normalizes_like_any_other() -> None:
    assert normalize_address("Eve@MAIL.Local", allow_special_use_domains=True) == "eve@mail.local"
    assert normalize_address("eve@example.com", allow_special_use_domains=True) == "eve@example.com"


def test_the_setting_is_off_unless_the_environment_turns_it_on() -> None:
    assert Settings.from_env({}).allow_special_use_domains is False
    assert Settings.from_env({"ALLOW_SPECIAL_USE_DOMAINS": "true"}).allow_special_use_domains is True


def test_templates_may_use_unsubscribe_url_without_recipients_supplying_it() -> None:
    body = valid_body(text="Bye: {{ unsubscribe_url }}", html='<a href="{{ unsubscribe_url }}">Leave</a>')

    request = parse_campaign_request(body, LIMIT)

    assert request.text == "Bye: {{ unsubscribe_url }}"


def test_tracking_switches_default_on_and_must_be_booleans() -> None:
    request = parse_campaign_request(valid_body(), LIMIT)
    off = parse_campaign_request(valid_body(track_opens=False, track_clicks=False), LIMIT)

    assert (request.track_opens, request.track_clicks) == (True, True)
    assert (off.track_opens, off.track_clicks) == (False, False)
    assert field_errors(valid_body(track_opens="no"), "track_opens") == ["must be true or false"]
