"""Fault injection for crash-safety tests: `ZS_EXTRACT_FAULT=POINT:N[:pause]`.

At the N-th time the extraction passes POINT, the process kills itself with SIGKILL (or, with
`:pause`, sleeps until something else kills it). Points: `batch_written` (a batch flushed into a
partial shard), `shard_complete` (a shard flushed, not yet renamed), `shard_final` (renamed),
`entry_written` (entry file written under its temporary name, not yet renamed). A paused process
first creates the file named by `ZS_EXTRACT_FAULT_READY`, if set. Unset, it costs one dict
lookup per call.
"""
from __future__ import annotations

import os
import signal
import threading
import time

_counts: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(point: str) -> None:
    spec = os.environ.get("ZS_EXTRACT_FAULT")
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    n, _, mode = rest.partition(":")
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        if _counts[point] != int(n or 1):
            return
    if mode == "pause":
        ready = os.environ.get("ZS_EXTRACT_FAULT_READY")
        if ready:
            open(ready, "w").close()
        while True:
            time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)
