"""Reads what the Mailu stand-in accepted."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path


def accepted_messages(maildir_root: Path) -> list[email.message.EmailMessage]:
    """Every message in the stand-in's outbox Maildir."""
    out = []
    for folder in ("new", "cur"):
        path = maildir_root / "outbox" / folder
        if path.exists():
            for file in sorted(path.iterdir()):
                out.append(email.message_from_bytes(file.read_bytes(), policy=email.policy.default))
    return out
