"""The render budget: hostile templates are refused quickly at creation, fail one recipient in the sender."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.rendering import (
    CampaignTemplates,
    RenderBudget,
    RenderBudgetExceeded,
    message_bytes,
    render_field,
)
from chalicelib.sending import Sender
from chalicelib.settings import Settings
from chalicelib.validation import parse_campaign_request

pytestmark = pytest.mark.unit

SLOW_LATER_ROWS = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}Hi {{ name }}"
HOSTILE = {
    "huge power": "{{ 9**(9**9) }}",
    "huge repetition": "{{ 'a'*10**9 }}",
    "huge body": "{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "huge padding": "{{ name.center(10**9) }}",
    "huge replace": "{% set s = 'a' * 100000 %}{{ s.replace('a', s) }}",
    "huge concat": "{% set s = 'a' * 1000000 %}{{ s ~ s ~ s ~ s ~ s ~ s }}",
    "huge format width": "{{ '%1000000000d' % 1 }}",
    "buffered in a block": "{% set s %}{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}{% endset %}{{ s }}",
    "nested empty loops": "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
    "exponential macro": "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(60) }}",
}


def body(field: str, template: str, rows: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request: dict[str, Any] = {
        "name": "n",
        "from": "news@shop.example.com",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}",
        "recipients": rows or [{"email": f"r{i}@example.org", "vars": {"name": "R", "n": 0}} for i in range(3)],
    }
    request[field] = template
    return request


@pytest.mark.parametrize("field", ["subject", "text", "html"])
@pytest.mark.parametrize("template", ["{{ 9**(9**9) }}", "{{ 'a'*10**9 }}"], ids=["power", "repetition"])
def test_a_hostile_template_is_a_400_naming_its_field_at_once(field: str, template: str) -> None:
    started = time.monotonic()
    with pytest.raises(InvalidCampaign) as caught:
        parse_campaign_request(body(field, template), 100)
    assert time.monotonic() - started < 0.5
    problems = [e for e in caught.value.errors if e.get("field") == field]
    assert problems and "render budget exceeded" in problems[0]["error"]


def test_a_template_slow_only_for_later_rows_is_a_400_within_the_budget() -> None:
    rows = [{"email": "first@example.org", "vars": {"name": "A", "n": 0}}] + [
        {"email": f"r{i}@example.org", "vars": {"name": "B", "n": 100000}} for i in range(1, 50)
    ]
    started = time.monotonic()
    with pytest.raises(InvalidCampaign) as caught:
        parse_campaign_request(body("text", SLOW_LATER_ROWS, rows), 100, render_budget=RenderBudget(0.2))
    elapsed = time.monotonic() - started
    assert elapsed < 1.5  # one row's budget, not 49 of them
    (problem,) = caught.value.errors
    assert problem["field"] == "text" and problem["row"] == 1
    assert "render budget exceeded" in problem["error"] and "longer than 0.2 s" in problem["error"]


def test_a_template_within_the_budget_still_passes() -> None:
    rows = [{"email": f"r{i}@example.org", "vars": {"name": "B", "n": 30}} for i in range(200)]
    request = parse_campaign_request(body("text", SLOW_LATER_ROWS, rows), 1000)
    assert len(request.recipients) == 200


@pytest.mark.parametrize("template", list(HOSTILE.values()), ids=list(HOSTILE))
def test_every_hostile_template_stops_within_the_budget(template: str) -> None:
    started = time.monotonic()
    with pytest.raises(RenderBudgetExceeded):
        render_field(template, {"name": "Al"}, budget=RenderBudget(seconds=0.3, max_chars=1_000_000))
    assert time.monotonic() - started < 1.0


def test_ordinary_templates_render_as_before() -> None:
    template = "{{ name }} {{ 2**10 }} {{ 'ab' * 3 }} {{ '%05d' % 42 }} {{ '{:>4}'.format('x') }} {{ 'a' ~ n }}"
    assert render_field(template, {"name": "Bo", "n": 1}) == "Bo 1024 ababab 00042    x a1"
    html = "{% macro li(x) %}<li>{{ x }}</li>{% endmacro %}{% for i in items %}{{ li(i) }}{% endfor %}"
    assert render_field(html, {"items": ["<b>"]}, html=True) == "<li>&lt;b&gt;</li>"


def test_the_field_that_overran_is_named() -> None:
    templates = CampaignTemplates("c1", "a@example.com", "Hello", "fine", "{{ 'a' * 10**9 }}")
    with pytest.raises(RenderBudgetExceeded) as caught:
        message_bytes(templates, "x@example.org", {}, "mailpipe.local")
    assert caught.value.field == "html"


def test_the_sender_renders_a_slow_template_off_the_event_loop() -> None:
    sender = Sender(Settings(render_budget_s=0.5), mailer=None, send_queue=None)  # type: ignore[arg-type]
    slow = CampaignTemplates("c1", "a@example.com", "Hi", SLOW_LATER_ROWS, None)
    fast = CampaignTemplates("c2", "a@example.com", "Hi {{ name }}", "Hello {{ name }}", None)

    async def batch() -> tuple[list[float], BaseException | None, bytes]:
        ticks: list[float] = []

        async def heartbeat() -> None:
            for _ in range(20):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        slow_job = asyncio.ensure_future(sender.render(slow, "s@example.org", {"name": "S", "n": 100000}))
        beat = asyncio.ensure_future(heartbeat())
        fast_mail = await sender.render(fast, "f@example.org", {"name": "F"})
        await beat
        try:
            await slow_job
        except RenderBudgetExceeded as exc:
            return ticks, exc, fast_mail
        return ticks, None, fast_mail

    ticks, error, fast_mail = asyncio.run(batch())
    assert b"Hello F" in fast_mail
    assert isinstance(error, RenderBudgetExceeded) and error.field == "text" and error.timed_out
    # The loop kept turning while the slow render ran: no gap near the render's 0.5 s.
    assert max(b - a for a, b in zip(ticks, ticks[1:], strict=False)) < 0.2
