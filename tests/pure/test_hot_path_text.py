"""The text the hot path writes by hand is the text the general code would write.

``ls`` lines are written without a dict and an encoder call per entry, the log lines with
a formatter that makes the date once per second and a line once for every handler, and
``clean`` skips ``repr`` for plain text (issue 11).  Each must stay byte for byte what
the straightforward code gives: clients parse the lines, admins and fail2ban grep the log.
"""

from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ftpd.framed.session import _ENCODE, _describe, _entry_line
from ftpd.logs import FORMAT, _Lines, _OneLine, clean, word
from ftpd.storage.base import Entry

NAMES = [
    "e0",
    "with space",
    'quote"d',
    "back\\slash",
    "tab\there",
    "new\nline",
    "\x7f\x01",
    "é",
    "日本語",
    "emoji \U0001f600",
    "\udcff\udcfe",  # undecodable bytes on disk (surrogateescape)
    "mixed é \udcff",
    "",
]


def entries() -> list[Entry]:
    out = []
    for name in NAMES:
        out.append(Entry(name, "file", 100, 1_700_000_000.123456, 0o644))
        out.append(Entry(name, "dir", 0, 1.5, 0o755))
    out += [
        Entry("link", "link", 0, 0.0, 0o777),
        Entry("odd", "unknown", 0, 0.0),
        Entry("sock", "other", 0, 1e-7, 0o600),
        Entry("int-mtime", "file", 5, 1_700_000_000, 0o600),  # a backend with whole seconds
        Entry("huge", "file", 2**70, 1e300, 0o7777),
        Entry("p", "file", 10, 2.0, 0o644, partial=10, expected=100),
        Entry("s", "file", 10, 2.0, 0o644, partial=10, expected=None),
        Entry("nan", "file", 0, float("nan"), 0),
        Entry("inf", "file", 0, float("inf"), 0),
    ]
    return out


@pytest.mark.parametrize("entry", entries(), ids=repr)
def test_ls_line_is_the_json_of_the_entry(entry: Entry) -> None:
    assert _entry_line(entry) == _ENCODE(_describe(entry)) + "\n"


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(),
    kind=st.sampled_from(["file", "dir", "link", "other", "unknown"]),
    size=st.integers(min_value=0, max_value=2**64),
    mtime=st.floats(allow_nan=False, allow_infinity=False),
    mode=st.integers(min_value=0, max_value=0o7777),
    partial=st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)),
    expected=st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)),
)
def test_ls_line_is_the_json_of_any_entry(
    name: str,
    kind: str,
    size: int,
    mtime: float,
    mode: int,
    partial: int | None,
    expected: int | None,
) -> None:
    entry = Entry(name, kind, size, mtime, mode, partial, expected)
    assert _entry_line(entry) == _ENCODE(_describe(entry)) + "\n"


def _clean_reference(text: object, limit: int = 200) -> str:
    quoted = repr(str(text))
    out = quoted[1:-1]
    if quoted[0] == '"':
        out = out.replace("'", "\\'")
    return out if len(out) <= limit else out[:limit] + "..."


@pytest.mark.parametrize(
    "text",
    [
        "plain",
        "a b",
        "it's",
        'say "hi"',
        'it\'s "both"',
        "back\\slash",
        "nl\n",
        "é",
        "x" * 300,
        "\x7f",
        "",
        3,
        None,
        b"bytes",
    ],
)
def test_clean_is_what_repr_gives(text: object) -> None:
    assert clean(text) == _clean_reference(text)
    assert clean(text, 5) == _clean_reference(text, 5)
    assert word(text) == _clean_reference(text).replace(" ", "\\x20")


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_clean_is_what_repr_gives_for_any_text(text: str) -> None:
    assert clean(text, 50) == _clean_reference(text, 50)


def _record(
    created: float, msg: str = "CMD %s -> %d", args: tuple = ("ls", 200)
) -> logging.LogRecord:
    record = logging.LogRecord("ftpd.framed.session", logging.INFO, __file__, 1, msg, args, None)
    record.created = created
    record.msecs = (created - int(created)) * 1000
    return record


@pytest.mark.parametrize("created", [1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.0005, 0.5])
def test_log_line_is_what_the_standard_formatter_writes(created: float) -> None:
    ours, console, standard = _Lines(), _OneLine(), logging.Formatter(FORMAT)
    for when in (created, created + 0.25, created + 1.0, created):  # the per-second cache
        expected = standard.format(_record(when))
        record = _record(when)
        assert ours.format(record) == expected
        assert console.format(record) == expected  # the second handler reuses the line
        assert ours.format(_record(when, "other %s", ("text",))) == standard.format(
            _record(when, "other %s", ("text",))
        )


def test_log_line_with_a_traceback_goes_whole_to_the_file_and_one_line_to_the_console() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        info = sys.exc_info()
    record = _record(1_700_000_000.5)
    record.exc_info = info
    plain = logging.Formatter(FORMAT).format(_record(1_700_000_000.5))
    assert _Lines().format(record) == logging.Formatter(FORMAT).format(record)
    assert "ValueError: boom" in _Lines().format(record)
    assert _OneLine().format(record) == plain
