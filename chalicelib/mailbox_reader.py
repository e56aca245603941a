"""Where delivery reports are read from: the bounce mailbox over IMAP, or a local Maildir.

The scheduled bounce reader asks for messages it has not looked at yet, and marks each one
processed (a report it applied) or kept (unmatched or unparsable, left for a human). Nothing
is ever deleted or expunged: both kinds stay in the mailbox, they just stop coming back.
"""

from __future__ import annotations

import imaplib
import logging
import mailbox
import os
import re
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

log = logging.getLogger(__name__)

KEPT_KEYWORD = "$MailpipeKept"
_FETCH_UID = re.compile(rb"\bUID (\d+)")


class ReportMailbox(Protocol):
    """The bounce reader's view of a mailbox."""

    def unread(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` (key, raw message) pairs neither processed nor kept, oldest first."""
        ...

    def mark_processed(self, key: str) -> None:
        """The message was applied; never return it again."""
        ...

    def mark_kept(self, key: str, reason: str) -> None:
        """The message could not be used; keep it for a human and never return it again."""
        ...


def open_mailbox(url: str) -> ReportMailbox:
    """`maildir:///abs/path`, `maildir:relative/path`, `imap://user:pass@host:port/INBOX` or `imaps://…`."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "maildir":
        # maildir:///abs/path is absolute; maildir:rel/path and maildir://rel/path are relative.
        path = unquote(f"{parts.netloc}{parts.path}")
        if not path:
            raise ValueError(f"no path in mailbox URL {url!r}")
        return MaildirMailbox(Path(path))
    if scheme in ("imap", "imaps"):
        if not parts.hostname:
            raise ValueError(f"no host in mailbox URL {_redacted(url)!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in mailbox URL {_redacted(url)!r}") from None
        return ImapMailbox(
            host=parts.hostname,
            port=port or (993 if scheme == "imaps" else 143),
            username=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            folder=unquote(parts.path.lstrip("/")) or "INBOX",
            ssl=scheme == "imaps",
        )
    raise ValueError(f"unsupported mailbox URL scheme {parts.scheme!r} (use maildir, imap or imaps)")


def _redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


class MaildirMailbox:
    """A Maildir: unread messages are the ones in new/; marking moves them to cur/.

    Processed messages get the Maildir "seen" flag (`:2,S`), kept ones the "flagged" flag
    (`:2,F`) and not seen, so a mail client shows them as needing attention.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._box = mailbox.Maildir(path, create=True)
        self.path = path

    def unread(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` messages from new/, oldest first (Maildir names start with the time)."""
        found: list[tuple[str, bytes]] = []
        for name in sorted(self._new_names()):
            if len(found) >= limit:
                break
            try:
                found.append((_key(name), (self.path / "new" / name).read_bytes()))
            except FileNotFoundError:
                continue  # another reader moved it meanwhile
        return found

    def mark_processed(self, key: str) -> None:
        """Move the message to cur/ with the seen flag."""
        self._move_to_cur(key, "S")

    def mark_kept(self, key: str, reason: str) -> None:
        """Move the message to cur/ flagged but unseen."""
        self._move_to_cur(key, "F")
        log.info("kept report %s in %s: %s", key, self.path, reason)

    def _new_names(self) -> list[str]:
        return [name for name in os.listdir(self.path / "new") if not name.startswith(".")]

    def _move_to_cur(self, key: str, flags: str) -> None:
        for name in self._new_names():
            if _key(name) == key:
                target = self.path / "cur" / f"{key}{self._box.colon}2,{flags}"
                try:
                    os.rename(self.path / "new" / name, target)
                except FileNotFoundError:
                    pass  # moved by a concurrent reader: the outcome is the same
                return
        if not any(_key(name) == key for name in os.listdir(self.path / "cur")):
            raise KeyError(f"no message {key!r} in {self.path}")


def _key(name: str) -> str:
    """A Maildir message's key is its file name without the ":2,flags" info."""
    return name.split(mailbox.Maildir.colon, 1)[0]


class ImapMailbox:
    """An IMAP folder: unread is UNSEEN without the kept keyword; marking only sets flags.

    Keys are UIDs. The connection opens on first use; call close() when done.
    """

    def __init__(
        self,
        *,
        host: str,
        port: int,
        username: str,
        password: str,
        folder: str = "INBOX",
        ssl: bool = True,
        timeout_s: float = 30.0,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.folder = folder
        self.ssl = ssl
        self.timeout_s = timeout_s
        self.password = password
        self._conn: imaplib.IMAP4 | None = None

    def unread(self, limit: int) -> list[tuple[str, bytes]]:
        """Up to `limit` unseen, not-kept messages, fetched with BODY.PEEK[] so reading sets no flag."""
        conn = self._connection()
        status, data = conn.uid("SEARCH", None, "UNSEEN", "UNKEYWORD", KEPT_KEYWORD)
        _check(status, data, "SEARCH")
        uids = sorted({int(uid) for uid in (data[0] or b"").split()})[: max(0, limit)]
        found: list[tuple[str, bytes]] = []
        for uid in uids:
            status, data = conn.uid("FETCH", str(uid), "(UID BODY.PEEK[])")
            _check(status, data, "FETCH")
            raw = _fetched_body(data, uid)
            if raw is not None:
                found.append((str(uid), raw))
        return found

    def mark_processed(self, key: str) -> None:
        """Set \\Seen."""
        self._store(key, "(\\Seen)")

    def mark_kept(self, key: str, reason: str) -> None:
        """Set \\Seen and the kept keyword (servers that refuse keywords still get \\Seen)."""
        try:
            self._store(key, f"(\\Seen {KEPT_KEYWORD})")
        except imaplib.IMAP4.error:
            self._store(key, "(\\Seen)")
        log.info("kept report uid %s in %s: %s", key, self.folder, reason)

    def close(self) -> None:
        """Log out; the next call reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.logout()
            except (imaplib.IMAP4.error, OSError):
                pass

    def _store(self, key: str, flags: str) -> None:
        if not key.isdigit():
            raise KeyError(f"not an IMAP UID: {key!r}")
        status, data = self._connection().uid("STORE", key, "+FLAGS.SILENT", flags)
        _check(status, data, "STORE")

    def _connection(self) -> imaplib.IMAP4:
        if self._conn is None:
            if self.ssl:
                conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(self.host, self.port, timeout=self.timeout_s)
            else:
                conn = imaplib.IMAP4(self.host, self.port, timeout=self.timeout_s)
            try:
                conn.login(self.username, self.password)
                status, data = conn.select(_quoted(self.folder))
                _check(status, data, "SELECT")
            except BaseException:
                conn.shutdown()
                raise
            self._conn = conn
        return self._conn


def _quoted(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _check(status: str, data: list, command: str) -> None:
    if status != "OK":
        raise imaplib.IMAP4.error(f"IMAP {command} failed: {status} {data!r}")


def _fetched_body(data: list, uid: int) -> bytes | None:
    """The literal of a UID FETCH response; responses for other messages are skipped."""
    for item in data:
        if isinstance(item, tuple) and len(item) == 2:
            match = _FETCH_UID.search(item[0])
            if match is None or int(match.group(1)) == uid:
                return item[1]
    return None
