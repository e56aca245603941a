"""Issue 9's corpus targets: classify() over real-world bounce messages, per format and class.

The corpus is the set of real bounces flufl.bounce's own tests use: tests/data in the source
distribution of the installed version (its wheel ships no tests), with the addresses those
tests assert (the DETECTORS table of its tests/test_detectors.py, read as data with `ast`,
never run). The project's own samples (tests/events/dsn, expectations in
tests/unit/test_bounces.py) are measured with them. The source distribution is fetched from
PyPI with pip once, and kept in pytest's cache: that is why this is an integration test.

Classes: flufl.bounce's tests sort addresses into temporary (still being retried) and
permanent (the MTA stopped). A ``gave_up`` verdict (``failed`` with a 4.x.x status) is in the
second class: the MTA stopped; it is shown apart. The project's samples are held to the exact
kind. ``-s`` prints the figures.

Targets: at least 95% of the expected addresses in the right class for RFC 3464 reports, at
least 90% for the other formats, no address that was not expected, no reader failing.
"""

from __future__ import annotations

import ast
import importlib.metadata
import logging
import subprocess
import sys
import tarfile
from collections import Counter
from dataclasses import dataclass
from email import message_from_bytes
from pathlib import Path

import pytest

from chalicelib.bounces import AUTO_REPLY, GAVE_UP, PERMANENT, TEMPORARY, Verdict, classify
from tests.unit.test_bounces import EXPECTED_VERDICTS, SAMPLES

pytestmark = pytest.mark.integration

RFC3464_FORMAT = "RFC 3464"
OTHER_FORMAT = "other formats"
TARGETS = {RFC3464_FORMAT: 0.95, OTHER_FORMAT: 0.90}
# flufl.bounce's two classes, and the verdict kinds that fall in each.
LIBRARY_CLASSES = {"permanent": {PERMANENT, GAVE_UP}, "temporary": {TEMPORARY}}


@dataclass(frozen=True)
class Case:
    """One message of the corpus and what must come out of it."""

    origin: str
    name: str
    raw: bytes
    expected: dict[str, str] | None  # address → class; None: its tests assert nothing about it


@pytest.fixture(scope="module")
def library_corpus(request: pytest.FixtureRequest) -> list[Case]:
    version = importlib.metadata.version("flufl.bounce")
    folder: Path = request.config.cache.mkdir("flufl-bounce-sdist")
    found = sorted(folder.glob(f"flufl*bounce-{version}.tar.gz"))
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
            + [f"flufl.bounce=={version}", "--dest", str(folder)],
            check=True,
            timeout=600,
        )
        found = sorted(folder.glob(f"flufl*bounce-{version}.tar.gz"))
    (sdist,) = found
    with tarfile.open(sdist) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers() if m.isfile() and "/" in m.name}
        table_source = tar.extractfile(members["tests/test_detectors.py"]).read().decode()  # type: ignore[union-attr]
        data = {
            path.rsplit("/", 1)[1]: tar.extractfile(member).read()  # type: ignore[union-attr]
            for path, member in members.items()
            if path.startswith("tests/data/") and path.endswith((".txt", ".eml"))
        }
    expected: dict[str, dict[str, str]] = {}
    for _detector, filename, addresses, is_temporary in _detectors_table(table_source):
        for address in addresses:
            expected.setdefault(filename, {})[address.decode().lower()] = "temporary" if is_temporary else "permanent"
        expected.setdefault(filename, {})
    assert len(data) > 100 and len(expected) > 100, "the corpus is not where this test expects it"
    return [Case(f"flufl.bounce {version}", name, raw, expected.get(name)) for name, raw in sorted(data.items())]


def _detectors_table(source: str) -> list[tuple[str, str, list[bytes], bool]]:
    """The literal DETECTORS list of flufl.bounce's tests: (detector, file, addresses, is_temporary)."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "DETECTORS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("no DETECTORS table in flufl.bounce's tests")


def _project_corpus() -> list[Case]:
    return [
        Case("tests/events/dsn", name, (SAMPLES / name).read_bytes(), {a: kind for a, kind, *_ in verdicts})
        for name, verdicts in sorted(EXPECTED_VERDICTS.items())
    ]


def _format(raw: bytes) -> str:
    types = {part.get_content_type() for part in message_from_bytes(raw).walk()}
    if types & {"message/delivery-status", "message/global-delivery-status"}:
        return RFC3464_FORMAT
    return OTHER_FORMAT


def _right(verdict: Verdict | None, expected_class: str, library: bool) -> bool:
    if verdict is None:
        return False
    return verdict.kind in LIBRARY_CLASSES[expected_class] if library else verdict.kind == expected_class


def test_corpus_targets(library_corpus: list[Case], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    expected_n: Counter[tuple[str, str]] = Counter()
    right_n: Counter[tuple[str, str]] = Counter()
    missed: list[str] = []
    wrong_class: list[str] = []
    wrong_addresses: list[str] = []
    gave_up: list[str] = []
    auto_replies: list[str] = []
    unasserted: list[str] = []
    cases = library_corpus + _project_corpus()
    for case in cases:
        verdicts = {v.address: v for v in classify(case.raw)}
        form = _format(case.raw)
        library = case.origin != "tests/events/dsn"
        if case.expected is None:
            unasserted.append(f"{case.name}: {sorted((v.address, v.kind) for v in verdicts.values())}")
            continue
        for address, expected_class in case.expected.items():
            expected_n[form, expected_class] += 1
            verdict = verdicts.get(address)
            if _right(verdict, expected_class, library):
                right_n[form, expected_class] += 1
                if library and verdict is not None and verdict.kind == GAVE_UP:
                    gave_up.append(f"{case.name} {address} {verdict.status}")
            elif verdict is None:
                missed.append(f"{case.name}: {address} ({expected_class})")
            else:
                wrong_class.append(f"{case.name}: {address} is {verdict.kind}, expected {expected_class}")
        for address, verdict in verdicts.items():
            if address in case.expected:
                continue
            if verdict.kind == AUTO_REPLY and library:
                auto_replies.append(f"{case.name}: {address}")  # its tests only say it bounces nobody
            else:
                wrong_addresses.append(f"{case.name}: {address} ({verdict.kind})")
    failures = [r.getMessage() for r in caplog.records if r.name.startswith(("chalicelib", "flufl"))]

    rates = {form: _rate(right_n, expected_n, form) for form in TARGETS}
    own = len(cases) - len(library_corpus)
    print(f"\ncorpus: {len(library_corpus)} messages of {library_corpus[0].origin}, {own} of tests/events/dsn")
    print(f"not asserted by the library's tests (read for failures only): {unasserted}")
    print(f"{'format':<14}{'class':<11}{'expected':>9}{'right':>7}{'right %':>9}")
    for form, klass in sorted(expected_n):
        n, ok = expected_n[form, klass], right_n[form, klass]
        print(f"{form:<14}{klass:<11}{n:>9}{ok:>7}{100 * ok / n:>8.1f}%")
    for form in TARGETS:
        n = sum(v for (f, _), v in expected_n.items() if f == form)
        print(f"{form:<14}{'all':<11}{n:>9}{round(rates[form] * n):>7}{100 * rates[form]:>8.1f}%")
    print(f"gave up (counted as permanent, the MTA stopped): {gave_up}")
    print(f"auto-replies recognised: {auto_replies}")
    print(f"missed: {missed}\nwrong class: {wrong_class}\nwrong addresses: {wrong_addresses}")
    print(f"reader failures: {failures}")

    assert rates[RFC3464_FORMAT] >= TARGETS[RFC3464_FORMAT]
    assert rates[OTHER_FORMAT] >= TARGETS[OTHER_FORMAT]
    assert wrong_addresses == []
    assert failures == []


def _rate(right_n: Counter[tuple[str, str]], expected_n: Counter[tuple[str, str]], form: str) -> float:
    total = sum(v for (f, _), v in expected_n.items() if f == form)
    return sum(v for (f, _), v in right_n.items() if f == form) / total
