"""chalicelib.sender_domains and the Idempotency-Key header: the parts that need no table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chalicelib.errors import InvalidCampaign
from chalicelib.idempotency import HEADER, parse_key
from chalicelib.sender_domains import covers, parse_domains, validate_tenant
from chalicelib.settings import Settings

pytestmark = pytest.mark.unit


def test_a_domain_covers_itself_and_its_subdomains_only() -> None:
    domains = frozenset({"example.com"})
    assert covers(domains, "example.com")
    assert covers(domains, "news.example.com")
    assert covers(domains, "a.b.example.com")
    assert not covers(domains, "notexample.com")
    assert not covers(domains, "example.com.evil.test")
    assert not covers(domains, "com")
    assert not covers(frozenset(), "example.com")


def test_domains_are_normalized_and_deduplicated() -> None:
    assert parse_domains({"domains": ["Example.COM", "example.com.", "news.example.org"]}, False) == [
        "example.com",
        "news.example.org",
    ]


def test_special_use_domains_only_where_allowed() -> None:
    assert parse_domains({"domains": ["mailpipe.local"]}, True) == ["mailpipe.local"]
    with pytest.raises(InvalidCampaign) as refused:
        parse_domains({"domains": ["mailpipe.local"]}, False)
    assert refused.value.errors[0]["field"] == "domains[0]"


def test_every_bad_domain_is_named() -> None:
    with pytest.raises(InvalidCampaign) as refused:
        parse_domains({"domains": ["ok.example", "not a domain", 7, "user@example.com", ""]}, False)
    assert [e["field"] for e in refused.value.errors] == ["domains[1]", "domains[2]", "domains[3]", "domains[4]"]


@pytest.mark.parametrize("body", [None, [], {"domains": "example.com"}, {"other": []}])
def test_a_body_without_a_domain_list_is_refused(body: object) -> None:
    with pytest.raises(InvalidCampaign) as refused:
        parse_domains(body, False)
    assert refused.value.errors[0]["field"] == "domains"


def test_tenant_names_from_the_path_are_bounded() -> None:
    assert validate_tenant("acme") == "acme"
    for bad in ("", "x" * 5000, "a\nb"):
        with pytest.raises(InvalidCampaign):
            validate_tenant(bad)


def test_idempotency_keys_are_short_printable_ascii() -> None:
    assert parse_key(None) is None
    assert parse_key(" 8e03978e-40d5-43e8-bc93-6894a57f9324 ") == "8e03978e-40d5-43e8-bc93-6894a57f9324"
    for bad in ("", "   ", "k" * 256, "clé", "a\tb"):
        with pytest.raises(InvalidCampaign) as refused:
            parse_key(bad)
        assert refused.value.errors[0]["field"] == HEADER


def test_sender_domains_are_required_in_every_stage_but_the_local_one() -> None:
    # Reading .chalice/config.json is this test's only I/O: what each stage's functions are given.
    config = json.loads((Path(__file__).parents[2] / ".chalice" / "config.json").read_text())
    assert Settings().require_sender_domains is True
    for stage, required in (("local", False), ("dev", True), ("prod", True)):
        env = {**config["environment_variables"], **config["stages"][stage]["environment_variables"]}
        assert Settings.from_env(env).require_sender_domains is required, stage
