"""chalicelib/csv_records.py: records split off raw bytes, offsets exact, quotes and encodings respected."""

from __future__ import annotations

import csv

import pytest

from chalicelib.csv_records import BOM, BadFile, RawRecord, decode_record, parse_fields, raw_records

pytestmark = pytest.mark.unit


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


FILE = b'email,note\r\na@x.org,"two\nlines"\r\nb@x.org,"say ""hi"""\nc@x.org,last'


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_records_and_their_offsets_do_not_depend_on_how_the_bytes_arrive(size: int) -> None:
    records = list(raw_records(chunked(FILE, size)))

    assert [r.data for r in records] == [
        b"email,note\r\n",
        b'a@x.org,"two\nlines"\r\n',
        b'b@x.org,"say ""hi"""\n',
        b"c@x.org,last",
    ]
    assert records[0].start == 0 and all(a.end == b.start for a, b in zip(records, records[1:], strict=False))
    assert records[-1].end == len(FILE)
    assert [parse_fields(decode_record(r, i)) for i, r in enumerate(records, 1)] == [
        ["email", "note"],
        ["a@x.org", "two\nlines"],
        ["b@x.org", 'say "hi"'],
        ["c@x.org", "last"],
    ]


def test_resuming_at_a_record_offset_reads_the_same_records_on() -> None:
    whole = list(raw_records([FILE]))
    cut = whole[2].start

    resumed = list(raw_records(chunked(FILE[cut:], 5), offset=cut))

    assert resumed == whole[2:]


def test_a_bom_is_dropped_at_the_start_of_the_file_only() -> None:
    first = RawRecord(0, 12, BOM + b"email,x\n")
    later = RawRecord(40, 52, BOM + b"a@x.org,y\n")

    assert decode_record(first, 1) == "email,x"
    assert decode_record(later, 5) == "\ufeffa@x.org,y"


def test_a_byte_that_is_not_utf8_names_the_row_and_the_file_offset() -> None:
    record = RawRecord(100, 112, "café@x.org\n".encode("latin-1"))

    with pytest.raises(BadFile, match=r"not UTF-8: row 7 .* byte 103 "):
        decode_record(record, 7)


def test_a_nul_byte_means_the_file_is_not_csv_text() -> None:
    with pytest.raises(BadFile, match="NUL byte in row 1"):
        decode_record(RawRecord(0, 8, b"\x89PNG\x00\x1a\n\n"), 1)


def test_an_unclosed_quote_fails_at_the_end_or_at_the_record_cap() -> None:
    with pytest.raises(BadFile, match="inside a quoted field"):
        list(raw_records([b'email\n"a@x.org\nb@x.org\n']))
    with pytest.raises(BadFile, match="longer than 32 bytes"):
        list(raw_records([b'email\n"' + b"x" * 40 + b"\n"], max_record_bytes=32))


def test_a_stray_quote_inside_a_field_is_a_csv_error_of_that_row() -> None:
    with pytest.raises(csv.Error):
        parse_fields('a@x.org,"unterminated')
    assert parse_fields("") == []
