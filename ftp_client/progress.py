"""Progress bars on stderr (tqdm): one unit family, names that fit, an overall bar.

Sizes and rates are binary throughout (``KiB``, ``MiB``, ``MiB/s``): tqdm's own scaling
divides by 1024 but prints ``MB/s``, so the figures are formatted here.  A long file name
is shortened in the middle so that the percentage, the sizes and the rate stay on an
80-column line.  Transfers of many files (``put -r``, ``get -r``, wildcards) show an
overall bar (files and bytes) above the current file's bar.  A bar whose transfer failed
is wiped (``discard``), never left behind at 0%.

tqdm is imported only when a bar is first made, so ``-q`` and pipes never load it.
"""

from __future__ import annotations

import shutil
import sys
import unicodedata
from typing import Any

#: Columns the figures right of the name take at most: ": 100%|", one column of bar,
#: "| 1023.9/1023.9 MiB 1023.9 MiB/s eta 12:34:56" (the bar shrinks, figures never do).
FIGURES_WIDTH = 54
MIN_NAME_WIDTH = 12
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {sizes} {speed} eta {remaining}"
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _unit(n: float) -> tuple[float, str]:
    value, unit = float(n), _UNITS[0]
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
        value /= 1024
    return value, unit


def binary(n: float) -> str:
    """``512 B``, ``1.5 KiB``, ``1023.9 MiB``: one decimal above bytes, 1024-based."""
    value, unit = _unit(n)
    return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"


def sizes(done: float, total: float) -> str:
    """``12.5/100.0 MiB``: both figures in the total's unit, so they never disagree."""
    scaled, unit = _unit(total)
    factor = (total / scaled) if scaled else 1.0
    if unit == "B":
        return f"{int(done)}/{int(total)} B"
    return f"{done / factor:.1f}/{scaled:.1f} {unit}"


def rate(bytes_per_s: float | None) -> str:
    return "? B/s" if not bytes_per_s else binary(bytes_per_s) + "/s"


def width(text: str) -> int:
    """Terminal columns: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "FW" else 1 for c in text)


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to ``limit`` columns with an ellipsis in the middle (keeps the extension)."""
    if width(text) <= limit:
        return text
    limit = max(limit, 3)
    keep = limit - 1
    head_w, tail_w = (keep + 1) // 2, keep // 2
    head, used = [], 0
    for c in text:
        if used + width(c) > head_w:
            break
        head.append(c)
        used += width(c)
    tail, used = [], 0
    for c in reversed(text):
        if used + width(c) > tail_w:
            break
        tail.append(c)
        used += width(c)
    return "".join(head) + "…" + "".join(reversed(tail))


def _columns(ncols: int | None) -> int:
    return ncols or shutil.get_terminal_size((80, 24)).columns - 1


_BAR_CLASS: Any = None


def _bar_class() -> Any:
    """A tqdm subclass that supplies our figures to BAR_FORMAT (made on first use)."""
    global _BAR_CLASS
    if _BAR_CLASS is None:
        from tqdm import tqdm

        class Bar(tqdm):
            monitor_interval = 0  # no monitor thread: our bars are refreshed by updates

            @property
            def format_dict(self) -> dict[str, Any]:
                d = super().format_dict
                d["ncols"] = _columns(d.get("ncols"))
                d["prefix"] = shorten(
                    self.desc or "", max(MIN_NAME_WIDTH, d["ncols"] - FIGURES_WIDTH)
                )
                speed = d.get("rate")
                if not speed and d.get("elapsed"):
                    speed = (d["n"] - d.get("initial", 0)) / d["elapsed"]
                d["sizes"] = sizes(d["n"], d["total"] or 0)
                d["speed"] = rate(speed)
                return d

        _BAR_CLASS = Bar
    return _BAR_CLASS


class Bars:
    """Makes the bars of one shell: ``file`` is a ``transfer.ProgressFactory``."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream
        self.overall: Any = None
        self._files = 0
        self._done_files = 0
        self._done_bytes = 0

    @property
    def fp(self) -> Any:
        return self.stream if self.stream is not None else sys.stderr

    def _make(self, label: str, total: int, initial: int, position: int, leave: bool) -> Any:
        bar = _bar_class()(
            desc=label,
            total=total,
            initial=initial,
            file=self.fp,
            dynamic_ncols=True,
            leave=leave,
            position=position,
            bar_format=BAR_FORMAT,
            unit="B",
            mininterval=0.1,
            delay=0,
        )
        return bar

    def file(self, label: str, total: int, initial: int) -> Any:
        """The current file's bar; under an overall bar it is wiped when done.

        An empty file gets none: there is nothing to show but a bar stuck at 0%.
        """
        if not total:
            return _NoBar()
        nested = self.overall is not None
        bar = self._make(label, total, initial, 1 if nested else 0, leave=not nested)
        if nested:
            self._advance(initial)
        return _FileBar(bar, self if nested else None)

    # --- the overall bar ---------------------------------------------------------

    def start(self, files: int, total: int) -> None:
        """Show an overall bar for ``files`` files of ``total`` bytes in all."""
        self.finish(ok=True)
        self._files, self._done_files, self._done_bytes = files, 0, 0
        if total:  # only empty files: no bar to fill
            self.overall = self._make(self._overall_label(), total, 0, 0, leave=True)

    def _overall_label(self) -> str:
        return f"all: {self._done_files}/{self._files} files"

    def _advance(self, n: int) -> None:
        if self.overall is not None and n:
            self.overall.update(n)

    def file_done(self, size: int) -> None:
        """One file finished: count it (whatever its bar saw, e.g. a resumed prefix)."""
        if self.overall is None:
            return
        self._done_files += 1
        self._done_bytes += size
        self.overall.n = self._done_bytes
        self.overall.set_description_str(self._overall_label(), refresh=False)
        self.overall.refresh()

    def finish(self, ok: bool) -> None:
        """Close the overall bar; a failed run that moved nothing leaves no bar behind."""
        if self.overall is None:
            return
        bar, self.overall = self.overall, None
        if not ok and not self._done_files:
            bar.leave = False
        bar.close()

    def write(self, text: str, stream: Any = None) -> None:
        """Print a line without tearing the bars (they are redrawn below it)."""
        from tqdm import tqdm

        tqdm.write(text, file=stream if stream is not None else self.fp)


class _FileBar:
    """One file's bar; its bytes also move the overall bar."""

    def __init__(self, bar: Any, owner: Bars | None) -> None:
        self.bar, self.owner = bar, owner

    def update(self, n: int) -> None:
        self.bar.update(n)
        if self.owner is not None:
            self.owner._advance(n)

    def discard(self) -> None:
        """The transfer failed: wipe this bar instead of leaving it at its last figure."""
        self.bar.leave = False

    def close(self) -> None:
        self.bar.close()


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def discard(self) -> None:
        pass

    def close(self) -> None:
        pass
