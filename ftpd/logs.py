"""Logging set-up: a size-rotated file in ``log_dir`` plus stderr, and safe text for logs.

``setup_logging`` is the only place that adds handlers; every other module just does
``logging.getLogger(__name__)``.  Client-supplied text goes through ``clean`` so a name
with a newline cannot forge a log line (and fool fail2ban).  Never log a password.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from io import TextIOWrapper
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FILE = "ftpd.log"
_OURS = "_ftpd_handler"
#: Where a record keeps its formatted line for our other handlers.
_LINE = "_ftpd_line"


def clean(text: object, limit: int = 200) -> str:
    """Client text made safe for one log field: escaped, and capped at ``limit`` characters.

    Control characters, backslashes and single quotes are escaped (``\\n``, ``\\\\``,
    ``\\'``), so the text can neither start a new line nor end a ``'...'`` field early
    and forge the next one: ``user='x' ip=6.6.6.6'`` (issue 9) becomes
    ``user='x\\' ip=6.6.6.6'``.  A cut never leaves a lone backslash before the quote.
    """
    if type(text) is str and text.isascii() and text.isprintable() and _plain(text):
        out = text  # what repr() would put between its quotes: the text itself
    else:
        quoted = repr(str(text))
        out = quoted[1:-1]
        if quoted[0] == '"':  # repr chose double quotes because of a "'": escape those too
            out = out.replace("'", "\\'")
    return out if len(out) <= limit else out[:limit] + "..."


def _plain(text: str) -> bool:
    """Printable ASCII that repr() leaves as it is: no backslash and no quote."""
    return "\\" not in text and "'" not in text


def word(text: object, limit: int = 200) -> str:
    """``clean`` for an unquoted ``key=value`` field: spaces escaped too (``\\x20``), so
    the value is one word and cannot add a field of its own (``user=x ip=6.6.6.6``)."""
    return clean(text, limit).replace(" ", "\\x20")


def setup_logging(
    log_dir: Path | None,
    level: str = "INFO",
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 5,
    stderr: bool = True,
) -> None:
    """(Re)install our handlers on the root logger; safe to call again on reload."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(handler)
        handler.close()
    formatter = _Lines()
    handlers: list[logging.Handler] = []
    if log_dir is not None:
        # Only the last component is made: a typo in log_dir must not grow a tree.
        log_dir.mkdir(exist_ok=True)
        handlers.append(
            SizeRotatingHandler(
                log_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
            )
        )
    if stderr:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(_OneLine())
        handlers.append(console)
    for handler in handlers:
        if handler.formatter is None:
            handler.setFormatter(formatter)
        setattr(handler, _OURS, True)
        root.addHandler(handler)
    root.setLevel(level)


class SizeRotatingHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that counts what it wrote instead of asking the file system.

    The standard one stats the file and seeks to its end, and formats each record twice,
    for every record: a measurable share of a small command's cost (docs/benchmarks.md).
    A file shrunk or rotated by someone else is still handled: its size is re-read at
    every open, and rotation renames by name as before.
    """

    def _open(self) -> TextIOWrapper:
        stream = super()._open()
        self._written = stream.seek(0, 2)
        return stream

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record) + self.terminator
            if self.stream is None:
                self.stream = self._open()
            if self.maxBytes > 0 and self._written and self._written + len(msg) >= self.maxBytes:
                self.doRollover()  # closes, renames, and reopens through _open
            self.stream.write(msg)
            self.stream.flush()
            self._written += len(msg.encode("utf-8")) if not msg.isascii() else len(msg)
        except Exception:
            self.handleError(record)


class _Lines(logging.Formatter):
    """``FORMAT``, the same text as ``logging.Formatter(FORMAT)`` at a fraction of its cost
    (the daemon writes a record per command, docs/benchmarks.md): the date is made once
    per second, and a record's line once for all our handlers (the file and stderr)."""

    def __init__(self) -> None:
        super().__init__(FORMAT)
        self._stamp: tuple[int, str] = (-1, "")  # (a second, its date); one tuple: threads

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second, stamp = self._stamp
        if second != int(record.created):
            stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._stamp = (int(record.created), stamp)
        msec_format = self.default_msec_format
        return msec_format % (stamp, record.msecs) if msec_format else stamp

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text or record.stack_info:
            return super().format(record)  # the rare record with a traceback: as ever
        line = record.__dict__.get(_LINE)
        if line is None:
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            line = record.__dict__[_LINE] = self.formatMessage(record)
        return str(line)


class _OneLine(_Lines):
    """Tracebacks go to the log file only; the console gets one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
