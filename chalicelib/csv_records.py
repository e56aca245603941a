"""Reads CSV records off a byte stream, knowing where each one starts and ends in the file.

An import resumes with a ranged GetObject (``Range: bytes=<offset>-``), so it must know the
byte just past the last record it handled; Python's csv module only sees text and hides
that. This reader splits the raw bytes into records itself: a record ends at a newline
outside quotes (an even number of ``"`` so far, since ``""`` escapes one), so a quoted field
may span lines. Each record is then decoded (strict UTF-8; a BOM only at the very start) and
parsed by the csv module alone. Nothing holds more than one chunk and one record.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

BOM = b"\xef\xbb\xbf"
# A record longer than this is no contact row: most likely an unclosed quote swallowing the
# file. It also keeps every contact item far below DynamoDB's 400 KB.
MAX_RECORD_BYTES = 64 * 1024


class BadFile(Exception):
    """The file cannot be read on from here: the whole import fails with this message."""


@dataclass(frozen=True)
class RawRecord:
    """One record's bytes and where they lie in the file (``end`` is just past its newline)."""

    start: int
    end: int
    data: bytes


def raw_records(
    chunks: Iterable[bytes], offset: int = 0, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[RawRecord]:
    """Split a byte stream that begins at file offset ``offset`` into records, quotes respected."""
    buffer = bytearray()
    start = offset  # file offset of buffer[0]
    scanned = 0  # bytes of buffer already searched for quotes and newlines
    quotes = 0  # quote characters in buffer[:scanned]
    for chunk in chunks:
        buffer += chunk
        while True:
            newline = buffer.find(b"\n", scanned)
            if newline < 0:
                quotes += buffer.count(b'"', scanned)
                scanned = len(buffer)
                if scanned > max_record_bytes:
                    raise BadFile(f"a record longer than {max_record_bytes} bytes at byte {start} (an unclosed quote?)")
                break
            quotes += buffer.count(b'"', scanned, newline)
            scanned = newline + 1
            if quotes % 2:
                continue  # the newline is inside a quoted field
            data = bytes(buffer[:scanned])
            del buffer[:scanned]  # CPython trims a bytearray's head in O(1)
            if len(data) > max_record_bytes:
                raise BadFile(f"a record longer than {max_record_bytes} bytes at byte {start} (an unclosed quote?)")
            yield RawRecord(start, start + len(data), data)
            start += len(data)
            scanned = quotes = 0
    if buffer:
        if quotes % 2:
            raise BadFile(f"the record at byte {start} ends inside a quoted field")
        yield RawRecord(start, start + len(buffer), bytes(buffer))


def decode_record(record: RawRecord, row: int) -> str:
    """The record as text, its line ending removed; a BadFile names the row and byte otherwise."""
    data = record.data
    if record.start == 0 and data.startswith(BOM):
        data = data[len(BOM) :]
    nul = data.find(b"\x00")
    if nul >= 0:
        raise BadFile(f"not a CSV text file: a NUL byte in row {row} (byte {record.start + nul})")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        where = record.start + exc.start + (len(BOM) if data is not record.data else 0)
        raise BadFile(f"not UTF-8: row {row} has an undecodable byte at byte {where} of the file") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def parse_fields(text: str) -> list[str]:
    """The fields of one record's text; csv.Error for a malformed one (a stray quote, say)."""
    if not text:
        return []
    return next(csv.reader([text], strict=True))
