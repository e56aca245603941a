"""Verified sender domains per tenant: a campaign's From must be on one of its tenant's domains.

An operator (the ``admin`` scope, as for /stream-failures: it is not a tenant's
own scope) registers the domains it has verified for a tenant, for example
after checking the tenant's SPF and DKIM records. Without this, any tenant
could send as support@paypal.com through the shared relay.

A registered domain covers its subdomains: whoever controls ``example.com``'s
DNS controls ``news.example.com`` too. Nothing else matches; in particular
``example.com`` does not cover ``notexample.com`` or ``example.com.evil.test``.

Domains are compared in the form email-validator normalizes them to
(lowercase, Unicode IDNs), the same form the From address is checked in.
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Any

from email_validator import EmailNotValidError

from chalicelib.errors import InvalidCampaign
from chalicelib.models import SenderDomains
from chalicelib.settings import Settings
from chalicelib.timeutil import now_iso
from chalicelib.validation import normalize_address

MAX_DOMAINS = 100


def normalize_domain(raw: str, allow_special_use: bool) -> str:
    """A domain as an address on it is normalized; raises EmailNotValidError when no address could use it."""
    domain = raw.strip().rstrip(".")
    if not domain or "@" in domain:
        raise EmailNotValidError("not a domain name")
    # normalize_address checks the domain the way a From address is checked, .local/.test included.
    return normalize_address(f"postmaster@{domain}", allow_special_use).rpartition("@")[2]


def parse_domains(body: Any, allow_special_use: bool) -> list[str]:
    """The ``domains`` of a PUT body, normalized and deduplicated; InvalidCampaign names each bad one."""
    if not isinstance(body, dict) or not isinstance(body.get("domains"), list):
        raise InvalidCampaign([{"field": "domains", "error": "must be a list of domain names"}])
    raw = body["domains"]
    if len(raw) > MAX_DOMAINS:
        raise InvalidCampaign([{"field": "domains", "error": f"at most {MAX_DOMAINS} domains"}])
    errors: list[dict] = []
    domains: dict[str, None] = {}
    for index, value in enumerate(raw):
        if not isinstance(value, str):
            errors.append({"field": f"domains[{index}]", "error": "must be a string"})
            continue
        try:
            domains[normalize_domain(value, allow_special_use)] = None
        except EmailNotValidError as exc:
            errors.append({"field": f"domains[{index}]", "error": f"not a valid sender domain: {exc}"})
    if errors:
        raise InvalidCampaign(errors)
    return sorted(domains)


def validate_tenant(tenant: str) -> str:
    """A tenant name from the path: the authorizer's tenants are short, printable strings."""
    if not tenant or len(tenant) > 200 or not tenant.isprintable():
        raise InvalidCampaign([{"field": "tenant", "error": "must be 1 to 200 printable characters"}])
    return tenant


def register(tenant: str, domains: list[str], by: str) -> dict[str, Any]:
    """Replace the tenant's verified domains (an empty list removes them all)."""
    item = SenderDomains(tenant, domains=set(domains) or None, updated_at=now_iso(), updated_by=by or None)
    item.save()
    return view(item)


def registered(tenant: str) -> frozenset[str]:
    """The tenant's verified domains (strongly consistent: a registration counts at once)."""
    try:
        item = SenderDomains.get(tenant, consistent_read=True)
    except SenderDomains.DoesNotExist:
        return frozenset()
    return frozenset(item.domains or ())


def describe(tenant: str) -> dict[str, Any]:
    """GET: the tenant's domains as registered."""
    try:
        return view(SenderDomains.get(tenant, consistent_read=True))
    except SenderDomains.DoesNotExist:
        return {"tenant": tenant, "domains": [], "updated_at": None}


def view(item: SenderDomains) -> dict[str, Any]:
    """One tenant's registration as the API shows it."""
    return {"tenant": item.tenant, "domains": sorted(item.domains or ()), "updated_at": item.updated_at}


def covers(domains: frozenset[str], domain: str) -> bool:
    """Whether ``domain`` is one of ``domains`` or a subdomain of one."""
    labels = domain.split(".")
    return any(".".join(labels[i:]) in domains for i in range(len(labels)))


def check_sender(tenant: str, from_header: str, settings: Settings) -> None:
    """Raise InvalidCampaign naming ``from`` unless the From address is on a verified domain.

    With ``require_sender_domains`` off (the local stage), a tenant that registered
    no domain may send from any; one that did is held to them.
    """
    domains = registered(tenant)
    if not domains and not settings.require_sender_domains:
        return
    (_display, address), *_ = getaddresses([from_header])
    domain = normalize_address(address, settings.allow_special_use_domains).rpartition("@")[2]
    if not domains:
        error = (
            f"tenant {tenant!r} has no verified sender domain; "
            f"an operator registers them at PUT /tenants/{{tenant}}/sender-domains"
        )
        raise InvalidCampaign([{"field": "from", "error": error}])
    if not covers(domains, domain):
        error = f"{domain} is not one of the tenant's verified sender domains ({', '.join(sorted(domains))})"
        raise InvalidCampaign([{"field": "from", "error": error}])
