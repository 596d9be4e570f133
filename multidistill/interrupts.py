"""Deferred interrupts: SIGINT and SIGTERM ask long loops to stop at a safe point.

Inside `deferred_interrupts()`, the signals set a flag instead of raising
in the middle of a write; the loop checks `stop.requested` after each unit of
work, finishes it, saves what it must and returns. Outside the main thread
(where Python cannot install handlers) the context does nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading


class StopFlag:
    def __init__(self):
        self.signals: list[int] = []

    @property
    def requested(self) -> bool:
        return bool(self.signals)

    @property
    def name(self) -> str:
        return signal.Signals(self.signals[0]).name if self.signals else ""


@contextlib.contextmanager
def deferred_interrupts():
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag.signals.append(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
