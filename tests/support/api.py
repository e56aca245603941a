"""A small HTTP client for the local API, as a user's script would call it."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from infra.local.__main__ import _token


def token(
    tenant: str = "acme", scopes: tuple[str, ...] = ("campaigns:read", "campaigns:write"), ttl_s: int = 3600
) -> str:
    """A bearer token signed with the local secret."""
    return _token(tenant, list(scopes), ttl_s)


class Api:
    """Calls the REST API with a bearer token."""

    def __init__(self, base_url: str, bearer: str | None) -> None:
        self.base_url = base_url
        self.bearer = bearer

    def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Returns (status, parsed JSON body or text); ``headers`` are sent besides the token's."""
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json", **(headers or {})}
        if self.bearer is not None:
            headers["Authorization"] = f"Bearer {self.bearer}"
        request = urllib.request.Request(self.base_url + path, method=method, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, payload = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, payload = exc.code, exc.read()
        try:
            return status, json.loads(payload) if payload else None
        except ValueError:
            return status, payload.decode(errors="replace")

    def create_campaign(self, n: int, prefix: str = "user", **overrides: Any) -> dict[str, Any]:
        """Create an n-recipient campaign; asserts the 202."""
        body = {
            "name": f"test {prefix}",
            "from": "News <news@example.com>",
            "subject": "Hello {{ name }}",
            "text": "Hi {{ name }}, this is mail for {{ email }}.",
            "recipients": [{"email": f"{prefix}{i}@example.org", "vars": {"name": f"N{i}"}} for i in range(n)],
        }
        body.update(overrides)
        status, payload = self.call("POST", "/campaigns", body)
        assert status == 202, payload
        return payload

    def wait_until_done(self, campaign_id: str, timeout_s: float = 300) -> dict[str, Any]:
        """Poll the campaign until it is completed (or completed with failures)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, campaign = self.call("GET", f"/campaigns/{campaign_id}")
            assert status == 200, campaign
            if campaign["status"].startswith("completed"):
                return campaign
            if time.monotonic() > deadline:
                raise AssertionError(f"campaign not done after {timeout_s}s: {campaign}")
            time.sleep(0.5)

    def wait_for_counts(self, campaign_id: str, expected: dict[str, int], timeout_s: float = 60) -> dict[str, Any]:
        """Poll until the campaign's counts include ``expected`` (the aggregator counts asynchronously)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, campaign = self.call("GET", f"/campaigns/{campaign_id}")
            assert status == 200, campaign
            counts = campaign.get("counts") or {}
            if all(counts.get(k) == v for k, v in expected.items()):
                return campaign
            if time.monotonic() > deadline:
                raise AssertionError(f"counts never reached {expected}: {counts}")
            time.sleep(0.2)

    def all_recipients(self, campaign_id: str, status: str | None = None) -> list[dict[str, Any]]:
        """Every recipient, following pagination."""
        out: list[dict[str, Any]] = []
        next_token = None
        while True:
            query = (
                "limit=500" + (f"&status={status}" if status else "") + (f"&next={next_token}" if next_token else "")
            )
            code, page = self.call("GET", f"/campaigns/{campaign_id}/recipients?{query}")
            assert code == 200, page
            out.extend(page["recipients"])
            next_token = page["next"]
            if not next_token:
                return out
