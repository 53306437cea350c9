"""Logging set-up: a size-rotated file in ``log_dir`` plus stderr, and safe text for logs.

``setup_logging`` is the only place that adds handlers; every other module just does
``logging.getLogger(__name__)``.  Client-supplied text goes through ``clean`` so a name
with a newline cannot forge a log line (and fool fail2ban).  Never log a password.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from io import TextIOWrapper
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
LOG_FILE = "ftpd.log"
_OURS = "_ftpd_handler"


def clean(text: object, limit: int = 200) -> str:
    """Client text made safe for one log field: escaped, and capped at ``limit`` characters.

    Control characters, backslashes and single quotes are escaped (``\\n``, ``\\\\``,
    ``\\'``), so the text can neither start a new line nor end a ``'...'`` field early
    and forge the next one: ``user='x' ip=6.6.6.6'`` (issue 9) becomes
    ``user='x\\' ip=6.6.6.6'``.  A cut never leaves a lone backslash before the quote.
    """
    quoted = repr(str(text))
    out = quoted[1:-1]
    if quoted[0] == '"':  # repr chose double quotes because of a "'": escape those too
        out = out.replace("'", "\\'")
    return out if len(out) <= limit else out[:limit] + "..."


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
    formatter = logging.Formatter(FORMAT)
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
        console.setFormatter(_OneLine(FORMAT))
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


class _OneLine(logging.Formatter):
    """Tracebacks go to the log file only; the console gets one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        if record.exc_info or record.exc_text:
            record = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return super().format(record)
