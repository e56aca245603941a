"""The dashboard in a real browser against the whole local pipeline.

Debian's Chromium drives the page served at ``/dashboard``: a 400 shows the bad
row, a created campaign is watched live over the WebSocket until every recipient
is sent or delivered — without the page ever reloading —, its engagement figures
(people and machines apart, top links, a recipient's timeline) appear and follow new
events live, and no uncaught script error happens on the way.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from chalicelib import wiring
from chalicelib.engagement import CLICKED, OPENED, EngagementEvent, record
from infra.local.runtime import LocalRuntime
from tests.support.api import Api, token

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
# Runs before the page's own script (injected by the driver, so the page's CSP does not
# apply to it) and records every violation the page's policy reports.
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  const where = `${e.sourceFile}:${e.lineNumber}`;
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} at ${where}`);
});
"""
LIVE_TIMEOUT_MS = 120_000
N_RECIPIENTS = 25


@pytest.fixture(scope="module")
def rt(runtime: LocalRuntime) -> LocalRuntime:
    """The real local runtime (tests/conftest.py): REST API, WebSocket gateway, senders, aggregator, stand-in."""
    return runtime


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


class PageErrors:
    """Uncaught exceptions, console errors and Content-Security-Policy violations a page reports."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.uncaught: list[str] = []
        self.console: list[str] = []
        self.csp: list[str] = []
        page.on("pageerror", lambda exc: self.uncaught.append(str(exc)))
        page.on("console", self._on_console)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if "Content Security Policy" in msg.text:
            self.csp.append(msg.text)
        if msg.type == "error":
            self.console.append(msg.text)

    def check(self, allowed_http: tuple[int, ...] = ()) -> None:
        """Fail on any uncaught error, and on console errors other than the expected HTTP statuses.

        Chromium logs every non-2xx fetch as "Failed to load resource: … status of N"; a
        test that provokes a 400 on purpose allows that one.
        """
        assert not self.uncaught, f"uncaught JS errors: {self.uncaught}"
        assert not self.csp, f"the page broke its Content-Security-Policy: {self.csp}"
        violations = self.page.evaluate("window.__cspViolations")
        assert violations == [], f"securitypolicyviolation events: {violations}"
        unexpected = [text for text in self.console if not any(f"status of {code} " in text for code in allowed_http)]
        assert not unexpected, f"console errors: {unexpected}"


@pytest.fixture
def dashboard(rt: LocalRuntime, browser: Browser) -> Iterator[tuple[Page, PageErrors]]:
    """A fresh browser context on the dashboard, the token given in the query string."""
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors = PageErrors(page)
    response = page.goto(rt.api_url + "/dashboard?token=" + token("e2e-tenant"))
    assert response is not None
    csp = response.headers.get("content-security-policy", "")
    assert csp.startswith("default-src 'none'; script-src 'sha256-"), f"served without the strict CSP: {csp!r}"
    assert response.headers.get("x-frame-options") == "DENY"
    expect(page.locator("#campaign-form")).to_be_visible()
    try:
        yield page, errors
    finally:
        context.close()


def fill_campaign(page: Page, name: str, recipients: str) -> None:
    page.fill("#c-name", name)
    page.fill("#c-from", "News <news@example.com>")
    page.fill("#c-subject", "Hello {{ name }}")
    page.fill("#c-text", "Hi {{ name }}, this is mail for {{ email }}.")
    page.fill("#c-html", "<p>Hi <b>{{ name }}</b></p>")
    page.fill("#c-recipients", recipients)


def load_marker(page: Page) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            marker: window.__mailpipeLoadId,
            navigations: performance.getEntriesByType("navigation").length,
            timeOrigin: performance.timeOrigin,
        })"""
    )


def test_invalid_recipient_row_is_shown(dashboard: tuple[Page, PageErrors]) -> None:
    page, errors = dashboard
    fill_campaign(page, "e2e invalid", "email,name\nada@example.org,Ada\nnot-an-address,Bob\ncy@example.org,Cy\n")
    page.click("#c-submit")

    form_errors = page.locator("#form-errors")
    expect(form_errors).to_contain_text("not-an-address")
    # The row is named the way the user wrote it: the third line of the pasted text.
    expect(form_errors).to_contain_text("line 3")
    expect(page.locator("#c-recipients")).to_have_attribute("aria-invalid", "true")
    # Nothing was created, so nothing is being watched.
    expect(page.locator("#watch-body")).to_be_hidden()
    errors.check(allowed_http=(400,))


def test_campaign_is_watched_live_until_every_recipient_is_sent(
    dashboard: tuple[Page, PageErrors], rt: LocalRuntime
) -> None:
    page, errors = dashboard
    loads: list[str] = []
    page.on("load", lambda p: loads.append(p.url))
    before = load_marker(page)

    rows = "\n".join(f"e2e-user{i}@example.org,Person {i}" for i in range(N_RECIPIENTS))
    fill_campaign(page, "e2e live", "email,name\n" + rows)
    expect(page.locator("#c-count")).to_have_text(f"{N_RECIPIENTS} recipients")
    page.click("#c-submit")

    expect(page.locator("#form-result")).to_contain_text(f"{N_RECIPIENTS} queued")
    expect(page.locator("#form-errors")).to_be_empty()
    expect(page.locator("#watch-body")).to_be_visible()
    # The new campaign is listed and selected.
    expect(page.locator("#campaign-list button.active")).to_contain_text("e2e live")

    # Live: the socket is open and subscribed...
    expect(page.locator("#ws-state")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    # ...and the counters reach the total with no reload.
    page.wait_for_function(
        """(n) => {
            const v = (id) => Number(document.getElementById(id).textContent);
            return v("count-sent") + v("count-delivered") === n;
        }""",
        arg=N_RECIPIENTS,
        timeout=LIVE_TIMEOUT_MS,
        polling=200,
    )
    progress = page.locator("#progress")
    expect(progress).to_have_attribute("data-done", str(N_RECIPIENTS), timeout=LIVE_TIMEOUT_MS)
    expect(progress).to_have_attribute("data-total", str(N_RECIPIENTS))
    expect(page.locator("#watch-status")).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#ws-state")).to_have_text("live")
    for state in ("pending", "sending", "deferred", "bounced", "failed", "suppressed"):
        expect(page.locator(f"#count-{state}")).to_have_text("0")
    expect(page.locator("#rate-delivery")).to_have_text("100.0%")
    expect(page.locator("#rate-bounce")).to_have_text("0.0%")
    expect(page.locator("#rate-failure")).to_have_text("0.0%")

    # The figures came over the WebSocket, and the per-minute chart has every send.
    assert page.evaluate("window.mailpipeDashboard.pushes()") > 0, "no stats message was pushed"
    # Each pushed "minute" replaces that minute's bucket, so the buckets must add up to every send.
    try:
        page.wait_for_function(
            """(n) => window.mailpipeDashboard.watched().buckets.reduce((a, b) => a + b.sent, 0) === n""",
            arg=N_RECIPIENTS,
            timeout=LIVE_TIMEOUT_MS,
        )
    except PlaywrightTimeoutError:
        buckets = page.evaluate("window.mailpipeDashboard.watched().buckets")
        raise AssertionError(
            f"the per-minute buckets do not add up to {N_RECIPIENTS} sends: {buckets} "
            "(a pushed stats message's `minute` must be the bucket's totals, not the batch's increments)"
        ) from None
    chart_has_bars = page.evaluate(
        """() => {
            const c = document.getElementById("chart");
            const data = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
            // Any pixel of the "sent" or "delivered" colour (blue or green dominant).
            for (let i = 0; i < data.length; i += 4) {
                const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
                if (a > 200 && ((b > 200 && r < 80) || (g > 140 && r < 60 && b < 120))) return true;
            }
            return false;
        }"""
    )
    assert chart_has_bars, "the per-minute chart drew no bars"

    # The recipients view lists them, one page of 50 at most.
    page.select_option("#r-status", "")
    page.click("#r-load")
    expect(page.locator("#recipients-table tbody tr")).to_have_count(N_RECIPIENTS)
    expect(page.locator("#recipients-table")).to_contain_text("e2e-user0@example.org")

    # Never reloaded: same document, same load marker, one navigation entry, no second load.
    after = load_marker(page)
    assert after == before, (before, after)
    assert before["navigations"] == 1
    assert loads == [], f"the page loaded again: {loads}"

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    errors.check()


def test_engagement_is_shown_human_and_machine_apart_and_updates_live(
    dashboard: tuple[Page, PageErrors], rt: LocalRuntime
) -> None:
    page, errors = dashboard
    api = Api(rt.api_url, token("e2e-tenant"))
    campaign_id = api.create_campaign(3, prefix="e2e-eng")["campaign_id"]
    api.wait_until_done(campaign_id, timeout_s=120)
    ann, bob = "e2e-eng0@example.org", "e2e-eng1@example.org"
    settings = wiring.settings()
    now = time.time()
    record(EngagementEvent(campaign_id, ann, OPENED), settings, now=now - 60)

    page.click("#list-refresh")
    page.locator("#campaign-list button", has_text="test e2e-eng").first.click()
    expect(page.locator("#watch-id")).to_have_text(campaign_id)
    expect(page.locator("#ws-state")).to_have_text("live", timeout=LIVE_TIMEOUT_MS)
    # The snapshot (GET /stats) already has the first open.
    expect(page.locator("#eng-opened-human-unique")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#top-links-empty")).to_be_visible()
    before = load_marker(page)

    # Then, live: the same pixel again, an image proxy, a click.
    record(EngagementEvent(campaign_id, ann, OPENED), settings, now=now - 50)
    record(EngagementEvent(campaign_id, bob, OPENED, machine=True, machine_reason="image_proxy"), settings, now - 40)
    record(EngagementEvent(campaign_id, ann, CLICKED, detail={"link": 0, "url": "https://example.com/a"}), settings)

    expect(page.locator("#eng-opened-human-total")).to_have_text("2", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#eng-opened-human-unique")).to_have_text("1")
    expect(page.locator("#eng-opened-machine-unique")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#eng-opened-machine-total")).to_have_text("1")
    expect(page.locator("#eng-clicked-human-unique")).to_have_text("1", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#eng-opened-rate")).to_have_text("33.3%")
    expect(page.locator("#eng-clicked-rate")).to_have_text("33.3%")
    top = page.locator("#top-links li")
    expect(top).to_have_count(1, timeout=LIVE_TIMEOUT_MS)
    expect(top.first).to_have_attribute("data-url", "https://example.com/a")
    expect(top.first).to_contain_text("1 people · 0 machines")
    assert page.evaluate("window.mailpipeDashboard.engagementPushes()") > 0, "no engagement figures were pushed"
    assert load_marker(page) == before, "the page reloaded"

    # A recipient's timeline in the recipients table.
    page.click("#r-load")
    row = page.locator("#recipients-table tbody tr", has_text=ann)
    row.locator("details.timeline-box summary").click()
    timeline = row.locator("ol.timeline li")
    expect(timeline).to_have_count(3)
    expect(row.locator("ol.timeline")).to_contain_text("clicked https://example.com/a")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-engagement.png"), full_page=True)
    errors.check()


def test_a_csv_is_uploaded_to_a_new_list_and_its_import_progress_shown(dashboard: tuple[Page, PageErrors]) -> None:
    page, errors = dashboard
    page.fill("#l-name", "e2e list")
    page.click("#l-create")
    expect(page.locator("#list-msg")).to_contain_text("created")
    expect(page.locator("#l-target option:checked")).to_have_text("e2e list")
    rows = "".join(f"e2e-contact{i}@example.org,Person {i}\n" for i in range(500))
    data = ("email,name\n" + rows + "not-an-address,Nobody\n").encode()
    page.set_input_files("#l-file", files=[{"name": "contacts.csv", "mimeType": "text/csv", "buffer": data}])

    # The page PUTs the file to the presigned URL (the emulator's origin: CORS and CSP allow it).
    page.click("#l-upload")

    expect(page.locator("#import-bar")).to_have_attribute("data-status", "completed", timeout=LIVE_TIMEOUT_MS)
    expect(page.locator("#import-progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#import-text")).to_contain_text("501 rows · 500 imported (500 new)")
    expect(page.locator("#import-errors")).to_contain_text("row 502: invalid address 'not-an-address'")
    expect(page.locator("#lists li", has_text="e2e list")).to_contain_text("500 contacts")
    errors.check()
