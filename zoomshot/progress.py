"""Progress bars for long loops (extract, evaluation of large caches): tqdm on stderr.

On a terminal tqdm redraws one line in place. When stderr is not a terminal (a log file, a job
scheduler) each update is a whole line, at most one every `log_interval` seconds, and closing the
bar always writes the final count, so a log ends with how far the run got. `enabled=False`
(the commands' `--quiet`) silences it.
"""
from __future__ import annotations

import sys

LOG_INTERVAL_S = 30.0


class _LogLines:
    """A file-like for tqdm that turns its carriage-return redraws into one line per update."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        text = s.replace("\r", "").replace("\x1b[A", "").strip("\n")
        if text.strip():
            self.stream.write(text + "\n")

    def flush(self) -> None:
        self.stream.flush()


def progress_bar(total: int, desc: str, unit: str = "img", enabled: bool = True, stream=None,
                 log_interval: float = LOG_INTERVAL_S, delay: float = 0.0):
    """A tqdm bar over `total` units (rate and ETA included); see the module docstring. With a
    delay, a loop that ends sooner shows no bar."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty:
        return tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled, dynamic_ncols=True,
                    unit_scale=False, smoothing=0.1, delay=delay)
    return tqdm(total=total, desc=desc, unit=unit, file=_LogLines(stream), disable=not enabled, ncols=100,
                mininterval=log_interval, maxinterval=log_interval, ascii=True, smoothing=0.1, delay=delay)
