"""A progress line on stderr with images/s: redrawn in place on a terminal, every 30 s otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "extract", enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.t0 = time.perf_counter()
        self.last = 0.0

    def rate(self) -> float:
        dt = time.perf_counter() - self.t0
        return self.done / dt if dt > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.tty and now - self.last > 0.2 or not self.tty and now - self.last > 30:
            self.last = now
            self._draw()

    def _draw(self, end: str = "") -> None:
        r = self.rate()
        eta = (self.total - self.done) / r if r > 0 else 0
        line = (f"[{self.label}] {self.done}/{self.total} images  {r:.1f} img/s"
                f"  eta {int(eta) // 60}:{int(eta) % 60:02d}")
        self.stream.write(("\r" + line + "\x1b[K" if self.tty else line + "\n") + end)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty and self.done:
            self._draw(end="\n")
