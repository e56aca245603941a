"""The Mailu stand-in, driven by aiosmtplib the way the sender drives Mailu.

Every test starts a real MailuStandin on a free port with its Maildirs under tmp_path and
asserts what a client sees (reply codes, exceptions) and what lands on disk (the outbox,
delivery reports in the sender's Maildir). The bounce mailbox reader is exercised on the
reports the stand-in writes.
"""

from __future__ import annotations

import asyncio
import email
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import aiosmtplib
import pytest

from chalicelib.dsn import parse_delivery_report
from chalicelib.mailbox_reader import ImapMailbox, MaildirMailbox, open_mailbox
from infra.local.smtp_standin import MailuStandin, StandinConfig

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 5.0
SENDER = "bounces@mailpipe.local"
DSN_MAIL_OPTIONS = ["RET=HDRS", "ENVID=c1"]
DSN_RCPT_OPTIONS = ["NOTIFY=SUCCESS,FAILURE,DELAY"]


def message(recipient: str, message_id: str = "<c1.m1@mailpipe.local>") -> bytes:
    return (
        f"From: Newsletter <news@mailpipe.local>\r\nTo: {recipient}\r\nSubject: November news\r\n"
        f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "\r\nHello.\r\n.leading dot survives\r\n"
    ).encode()


class Endpoint(NamedTuple):
    """Where an SMTP server listens (a MailuStandin has the same two attributes)."""

    host: str
    port: int


@pytest.fixture
def start_standin(tmp_path: Path) -> Iterator[Callable[..., MailuStandin]]:
    """Start a stand-in with the given config overrides; all are stopped after the test."""
    started: list[MailuStandin] = []

    def start(**overrides: Any) -> MailuStandin:
        config = StandinConfig(**{"maildir_root": tmp_path / "mail", "dsn_delay_s": 0.05, **overrides})
        standin = MailuStandin(config).start()
        started.append(standin)
        return standin

    yield start
    for standin in started:
        standin.stop()


async def _client(server: MailuStandin | Endpoint, *, tls: bool = True, login: bool = True) -> aiosmtplib.SMTP:
    client = aiosmtplib.SMTP(
        hostname=server.host, port=server.port, start_tls=tls, validate_certs=False, timeout=DEADLINE_S
    )
    await client.connect()
    if login:
        await client.login("mailpipe", "mailpipe")
    return client


def send(
    server: MailuStandin | Endpoint,
    recipients: list[str],
    *,
    tls: bool = True,
    login: bool = True,
    mail_options: list[str] | None = None,
    rcpt_options: list[str] | None = None,
    raw: bytes | None = None,
) -> tuple[dict[str, Any], str]:
    """One sendmail on a fresh STARTTLS connection, as the sender does it."""

    async def run() -> tuple[dict[str, Any], str]:
        client = await _client(server, tls=tls, login=login)
        try:
            return await client.sendmail(
                SENDER,
                recipients,
                raw or message(recipients[0]),
                mail_options=DSN_MAIL_OPTIONS if mail_options is None else mail_options,
                rcpt_options=DSN_RCPT_OPTIONS if rcpt_options is None else rcpt_options,
            )
        finally:
            client.close()

    return asyncio.run(run())


def new_files(maildir: Path) -> list[Path]:
    new = maildir / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def wait_for_files(maildir: Path, count: int) -> list[Path]:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        files = new_files(maildir)
        if len(files) >= count:
            return files
        time.sleep(0.02)
    raise AssertionError(f"expected {count} message(s) in {maildir}, found {len(new_files(maildir))}")


def test_accepted_mail_is_stored_in_the_outbox_with_envelope_headers(start_standin) -> None:
    standin = start_standin()
    errors, reply = send(standin, ["alice@example.com"])
    assert errors == {}
    assert reply.startswith("2.0.0 Ok: queued as ")
    [stored] = wait_for_files(standin.outbox, 1)
    raw = stored.read_bytes()
    assert raw.startswith(b"Return-Path: <bounces@mailpipe.local>\nDelivered-To: alice@example.com\n")
    assert b"\r\n" not in raw
    parsed = email.message_from_bytes(raw)
    assert parsed["Message-ID"] == "<c1.m1@mailpipe.local>"
    assert parsed.get_payload() == "Hello.\n.leading dot survives\n"
    assert standin.stats()["accepted"] == 1


def test_mail_to_our_own_mailboxes_is_delivered_there_plus_addresses_included(start_standin) -> None:
    """A reply to a plus-addressed Reply-To lands in the report mailbox, token intact, and is not relayed."""
    standin = start_standin()
    tagged = "bounces+AbC_d-9xYz@mailpipe.local"
    errors, _ = send(standin, [tagged, "alice@example.com"], raw=message(tagged))
    assert errors == {}
    [delivered] = wait_for_files(standin.config.maildir_root / "bounces", 1)
    assert delivered.read_bytes().startswith(f"Return-Path: <{SENDER}>\nDelivered-To: {tagged}\n".encode())
    [relayed] = wait_for_files(standin.outbox, 1)
    assert b"Delivered-To: alice@example.com\n" in relayed.read_bytes()
    assert standin.local_maildir("Bounces@MailPipe.Local") == standin.config.maildir_root / "Bounces"
    assert standin.local_maildir("bounces@example.com") is None


def test_each_accepted_recipient_gets_its_own_copy(start_standin) -> None:
    standin = start_standin(dsn=False)
    send(standin, ["a@example.com", "b@example.com", "c@example.com"])
    files = wait_for_files(standin.outbox, 3)
    delivered_to = sorted(email.message_from_bytes(f.read_bytes())["Delivered-To"] for f in files)
    assert delivered_to == ["a@example.com", "b@example.com", "c@example.com"]


def test_delivered_report_for_notify_success(start_standin) -> None:
    standin = start_standin()
    send(standin, ["alice@example.com"], rcpt_options=[*DSN_RCPT_OPTIONS, "ORCPT=rfc822;Alice+2Bnews@example.com"])
    [raw_report] = wait_for_files(standin.config.maildir_root / "bounces", 1)
    data = raw_report.read_bytes()
    assert data.startswith(b"Return-Path: <>\nDelivered-To: bounces@mailpipe.local\n")
    report = parse_delivery_report(data)
    assert report is not None
    assert report.envelope_id == "c1"
    assert report.original_message_id == "<c1.m1@mailpipe.local>"
    assert report.reporting_mta == "mail.mailpipe.local"
    [recipient] = report.recipients
    assert (recipient.final_recipient, recipient.original_recipient) == ("alice@example.com", "alice+news@example.com")
    assert (recipient.action, recipient.status) == ("delivered", "2.0.0")
    assert standin.stats()["dsn_sent"] == 1


def test_no_delivered_report_without_notify_success_or_with_dsn_off(start_standin) -> None:
    quiet = start_standin()
    send(quiet, ["alice@example.com"], rcpt_options=["NOTIFY=FAILURE,DELAY"])
    send(quiet, ["bob@example.com"], rcpt_options=[], mail_options=[])
    off = start_standin(dsn=False, maildir_root=quiet.config.maildir_root / "off")
    send(off, ["carol@example.com"])
    wait_for_files(quiet.outbox, 2)
    wait_for_files(off.outbox, 1)
    time.sleep(0.3)  # several times dsn_delay_s: a report would have been written by now
    assert new_files(quiet.config.maildir_root / "bounces") == []
    assert new_files(off.config.maildir_root / "bounces") == []


def test_permanent_failure_is_refused_at_rcpt(start_standin) -> None:
    standin = start_standin(perm_fail=("nobody@example.com", "@blocked.example"))

    async def run() -> list[int]:
        client = await _client(standin)
        codes = []
        for address in ("nobody@example.com", "Someone@BLOCKED.example"):
            await client.mail(SENDER, options=DSN_MAIL_OPTIONS)
            with pytest.raises(aiosmtplib.SMTPRecipientRefused) as refused:
                await client.rcpt(address, options=DSN_RCPT_OPTIONS)
            assert f"<{address}>: Recipient address rejected" in refused.value.message
            codes.append(refused.value.code)
            await client.rset()
        client.close()
        return codes

    assert asyncio.run(run()) == [550, 550]
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused_all:
        send(standin, ["nobody@example.com"])
    assert [r.code for r in refused_all.value.recipients] == [550]
    assert new_files(standin.outbox) == []
    assert standin.stats()["perm_failed"] == 3


def test_temporary_failure_rate_one_refuses_with_451(start_standin) -> None:
    standin = start_standin(temp_fail_rate=1.0)
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused) as refused:
        send(standin, ["alice@example.com"])
    [recipient] = refused.value.recipients
    assert (recipient.code, recipient.message) == (451, "4.7.1 Try again later")
    assert new_files(standin.outbox) == []
    assert standin.stats()["temp_failed"] == 1


def test_seeded_faults_repeat(start_standin) -> None:
    def outcomes(standin: MailuStandin) -> list[int]:
        async def run() -> list[int]:
            client = await _client(standin)
            codes = []
            for n in range(30):
                await client.mail(SENDER)
                try:
                    codes.append((await client.rcpt(f"r{n}@example.com")).code)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    codes.append(exc.code)
                await client.rset()
            client.close()
            return codes

        return asyncio.run(run())

    first = outcomes(start_standin(temp_fail_rate=0.5, seed=7))
    second = outcomes(start_standin(temp_fail_rate=0.5, seed=7))
    assert first == second
    assert set(first) == {250, 451}


def test_dropped_connection_stores_nothing(start_standin) -> None:
    standin = start_standin(drop_rate=1.0)
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        send(standin, ["alice@example.com"])
    time.sleep(0.2)
    assert new_files(standin.outbox) == []
    assert new_files(standin.config.maildir_root / "bounces") == []
    assert standin.stats()["dropped"] == 1
    assert standin.stats()["accepted"] == 0
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):  # the server itself keeps serving
        send(standin, ["bob@example.com"])
    assert standin.stats()["dropped"] == 2


def test_latency_delays_the_data_reply(start_standin) -> None:
    standin = start_standin(latency_ms=300, dsn=False)
    started = time.monotonic()
    send(standin, ["alice@example.com"])
    assert time.monotonic() - started >= 0.3


def test_mail_without_auth_is_refused_with_530(start_standin) -> None:
    standin = start_standin()
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
        send(standin, ["alice@example.com"], login=False)
    assert refused.value.code == 530
    with pytest.raises(aiosmtplib.SMTPSenderRefused) as plain:
        send(standin, ["alice@example.com"], login=False, tls=False)
    assert plain.value.code == 530
    assert new_files(standin.outbox) == []


def test_auth_only_after_starttls_and_only_with_the_right_password(start_standin) -> None:
    standin = start_standin()

    async def run() -> None:
        plain = await _client(standin, tls=False, login=False)
        await plain.ehlo()
        assert "starttls" in plain.esmtp_extensions
        assert "auth" not in plain.esmtp_extensions  # like Mailu: no AUTH in the clear
        plain.close()
        for mechanism in ("PLAIN", "LOGIN"):
            secure = await _client(standin, login=False)
            await secure.ehlo()  # STARTTLS forgets the first EHLO, as RFC 3207 says
            assert set(secure.server_auth_methods) == {"plain", "login"}
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as denied:
                await getattr(secure, f"auth_{mechanism.lower()}")("mailpipe", "wrong")
            assert denied.value.code == 535
            response = await getattr(secure, f"auth_{mechanism.lower()}")("mailpipe", "mailpipe")
            assert response.code == 235
            secure.close()

    asyncio.run(run())


def test_plain_server_without_tls_or_auth(start_standin) -> None:
    standin = start_standin(tls=False, require_auth=False)
    send(standin, ["alice@example.com"], tls=False, login=False)
    wait_for_files(standin.outbox, 1)


def test_late_failure_is_accepted_then_bounced_with_a_dsn(start_standin) -> None:
    standin = start_standin(late_fail=("late@example.com",))
    errors, _ = send(standin, ["late@example.com"], raw=message("late@example.com", "<c1.late@mailpipe.local>"))
    assert errors == {}
    [raw_report] = wait_for_files(standin.config.maildir_root / "bounces", 1)
    assert new_files(standin.outbox) == []
    report = parse_delivery_report(raw_report.read_bytes())
    assert report is not None
    assert report.envelope_id == "c1"
    assert report.original_message_id == "<c1.late@mailpipe.local>"
    [recipient] = report.recipients
    assert recipient.final_recipient == "late@example.com"
    assert (recipient.action, recipient.status) == ("failed", "5.1.1")
    assert recipient.diagnostic == "550 5.1.1 user unknown"
    assert recipient.is_permanent_failure
    assert standin.stats()["late_failed"] == 1


def test_late_failure_honours_notify_never_and_ret_full(start_standin) -> None:
    standin = start_standin(late_fail=("@late.example",))
    send(standin, ["x@late.example"], rcpt_options=["NOTIFY=NEVER"])
    send(standin, ["y@late.example"], mail_options=["RET=FULL", "ENVID=full"], rcpt_options=[])
    [raw_report] = wait_for_files(standin.config.maildir_root / "bounces", 1)
    time.sleep(0.2)
    assert len(new_files(standin.config.maildir_root / "bounces")) == 1
    parsed = email.message_from_bytes(raw_report.read_bytes())
    assert [p.get_content_type() for p in parsed.get_payload()][-1] == "message/rfc822"
    report = parse_delivery_report(raw_report.read_bytes())
    assert report is not None
    assert (report.envelope_id, report.recipients[0].final_recipient) == ("full", "y@late.example")


def test_dsn_parameters_are_advertised_validated_and_kept_verbatim(start_standin) -> None:
    standin = start_standin()

    async def run() -> None:
        client = await _client(standin)
        assert "dsn" in client.esmtp_extensions
        bad = await client.execute_command(b"MAIL", b"FROM:<bounces@mailpipe.local>", b"RET=SOME")
        assert bad.code == 501
        ok = await client.mail(SENDER, options=["RET=hdrs", "ENVID=MixedCase+2B1"])
        assert ok.code == 250
        bad = await client.execute_command(b"RCPT", b"TO:<alice@example.com>", b"NOTIFY=SOMETIMES")
        assert bad.code == 501
        unknown = await client.execute_command(b"RCPT", b"TO:<alice@example.com>", b"FOO=BAR")
        assert unknown.code == 555
        ok = await client.rcpt("alice@example.com", options=["NOTIFY=SUCCESS", "ORCPT=rfc822;Alice@Example.com"])
        assert ok.code == 250
        await client.data(message("alice@example.com"))
        client.close()

    asyncio.run(run())
    [raw_report] = wait_for_files(standin.config.maildir_root / "bounces", 1)
    report = parse_delivery_report(raw_report.read_bytes())
    assert report is not None
    assert report.envelope_id == "MixedCase+1"
    assert report.recipients[0].original_recipient == "alice@example.com"


def test_connection_reuse_and_stop_flushes_pending_reports(start_standin, tmp_path: Path) -> None:
    standin = start_standin(dsn_delay_s=60)

    async def run() -> None:
        client = await _client(standin)
        for n in range(20):
            await client.sendmail(
                SENDER,
                [f"r{n}@example.com"],
                message(f"r{n}@example.com", f"<c1.{n}@mailpipe.local>"),
                mail_options=DSN_MAIL_OPTIONS,
                rcpt_options=DSN_RCPT_OPTIONS,
            )
        await client.quit()

    asyncio.run(run())
    assert len(new_files(standin.outbox)) == 20
    assert new_files(standin.config.maildir_root / "bounces") == []
    standin.stop()
    assert len(new_files(standin.config.maildir_root / "bounces")) == 20
    assert standin.stats()["dsn_sent"] == 20


def test_config_from_env() -> None:
    config = StandinConfig.from_env(
        {
            "SMTP_HOST": "127.0.0.2",
            "SMTP_PORT": "2525",
            "SMTP_STANDIN_MAILDIR": "/tmp/mail",
            "SMTP_USERNAME": "u",
            "SMTP_PASSWORD": "p",
            "SMTP_STANDIN_TEMP_FAIL_RATE": "0.25",
            "SMTP_STANDIN_PERM_FAIL": "a@x.example, @y.example",
            "SMTP_STANDIN_DROP_RATE": "0.1",
            "SMTP_STANDIN_LATENCY_MS": "40",
            "SMTP_STANDIN_LATE_FAIL": "late@x.example",
            "SMTP_STANDIN_DSN": "false",
            "SMTP_STANDIN_SEED": "42",
            "SMTP_STANDIN_LOCAL_DOMAINS": "mail.example, @Other.Example",
            "SMTP_STANDIN_IGNORED": "whatever",
        },
        latency_ms=5,
    )
    assert config == StandinConfig(
        host="127.0.0.2",
        port=2525,
        maildir_root=Path("/tmp/mail"),
        username="u",
        password="p",
        temp_fail_rate=0.25,
        perm_fail=("a@x.example", "@y.example"),
        drop_rate=0.1,
        latency_ms=5,
        late_fail=("late@x.example",),
        dsn=False,
        seed=42,
        local_domains=("mail.example", "other.example"),
    )
    assert StandinConfig.from_env({"SMTP_PORT": "", "SMTP_STANDIN_DSN": "1"}) == StandinConfig()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SMTP_PORT", "smtp"),
        ("SMTP_PORT", "70000"),
        ("SMTP_STANDIN_TEMP_FAIL_RATE", "1.5"),
        ("SMTP_STANDIN_DROP_RATE", "lots"),
        ("SMTP_STANDIN_LATENCY_MS", "-1"),
        ("SMTP_STANDIN_DSN", "maybe"),
        ("SMTP_STANDIN_SEED", "0x"),
    ],
)
def test_config_from_env_names_the_bad_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        StandinConfig.from_env({variable: value})


def test_runs_as_its_own_process(tmp_path: Path) -> None:
    env = {**os.environ, "SMTP_STANDIN_MAILDIR": str(tmp_path / "mail"), "SMTP_PORT": "0", "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "infra.local.smtp_standin"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        host, _, port = line.removeprefix("SMTP: ").rpartition(":")
        assert line.startswith("SMTP: ") and host == "127.0.0.1"
        send(Endpoint(host, int(port)), ["alice@example.com"])
        wait_for_files(tmp_path / "mail" / "outbox", 1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=DEADLINE_S) == 0
        # the pending delivered report is written on shutdown, not lost
        assert len(new_files(tmp_path / "mail" / "bounces")) == 1
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_maildir_mailbox_reads_each_report_once_and_deletes_nothing(start_standin) -> None:
    standin = start_standin(late_fail=("late@example.com",))
    send(standin, ["alice@example.com"])
    send(standin, ["late@example.com"])
    bounces = standin.config.maildir_root / "bounces"
    wait_for_files(bounces, 2)
    (bounces / "new" / "1701118000.M1P1.local").write_bytes(b"Subject: out of office\n\nback Monday\n")

    reader = open_mailbox(f"maildir://{bounces}")
    assert isinstance(reader, MaildirMailbox)
    first = reader.unread(limit=2)
    assert [key for key, _ in first] == ["1701118000.M1P1.local", first[1][0]]
    rest = reader.unread(limit=10)
    assert len(rest) == 3 and rest[:2] == first

    kinds = {key: parse_delivery_report(raw) for key, raw in rest}
    for key, report in kinds.items():
        if report is None:
            reader.mark_kept(key, "not a delivery report")
        else:
            reader.mark_processed(key)
    reader.mark_processed(rest[1][0])  # marking twice is harmless

    assert reader.unread(limit=10) == []
    assert open_mailbox(f"maildir://{bounces}").unread(limit=10) == []  # a second run finds nothing new
    cur = sorted(p.name for p in (bounces / "cur").iterdir())
    assert new_files(bounces) == []
    assert len(cur) == 3
    assert "1701118000.M1P1.local:2,F" in cur
    assert sum(name.endswith(":2,S") for name in cur) == 2
    with pytest.raises(KeyError):
        reader.mark_processed("no-such-key")


def test_open_mailbox_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_mailbox("maildir:.local/mail/bounces")
    assert isinstance(relative, MaildirMailbox)
    assert relative.path == Path(".local/mail/bounces")
    assert (tmp_path / ".local/mail/bounces/new").is_dir()
    absolute = open_mailbox(f"maildir://{tmp_path}/abs")
    assert isinstance(absolute, MaildirMailbox) and absolute.path == tmp_path / "abs"

    imap = open_mailbox("imaps://bounces%40mailpipe.local:p%2Fss%3Aword@mail.example.com:1993/Bounces")
    assert isinstance(imap, ImapMailbox)
    assert (imap.host, imap.port, imap.ssl, imap.folder) == ("mail.example.com", 1993, True, "Bounces")
    assert (imap.username, imap.password) == ("bounces@mailpipe.local", "p/ss:word")
    plain = open_mailbox("imap://u:p@localhost/")
    assert isinstance(plain, ImapMailbox)
    assert (plain.port, plain.ssl, plain.folder) == (143, False, "INBOX")

    for bad in ("pop3://u:p@host/", "/just/a/path", "imap:///INBOX"):
        with pytest.raises(ValueError):
            open_mailbox(bad)
