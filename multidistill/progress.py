"""Progress bars: live on a terminal, a line every half minute in a log.

Every long loop of multidistill (dataset building, distillation, evaluation,
teacher training) shows a tqdm bar with its rate and ETA on stderr. On a
terminal it redraws as tqdm does (10 times a second at most); when stderr is
a file or a pipe (a CI log, `nohup ... > log`), it redraws at most every
`LOG_INTERVAL_S` seconds, each redraw a line of its own, so a 20-minute run
writes tens of lines, not tens of thousands.
"""

from __future__ import annotations

import sys

LOG_INTERVAL_S = 30.0  # Seconds between redraws when stderr is not a terminal.


def on_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # Closed or not a file.
        return False


def bar(total: float, desc: str, unit: str, **kwargs):
    """A tqdm bar on stderr (see the module docstring); kwargs go to tqdm."""
    from tqdm import tqdm

    if on_terminal():
        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)

    class LogBar(tqdm):
        """A new postfix shows at the next redraw: tqdm's `set_postfix`
        redraws at once by default, which would bypass the interval."""

        def set_postfix(self, ordered_dict=None, refresh=False, **kw):
            super().set_postfix(ordered_dict, refresh=refresh, **kw)

    kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    kwargs.setdefault("maxinterval", max(LOG_INTERVAL_S, 10.0))
    # A fixed miniters: with tqdm's dynamic one (> 1 once updates come in
    # steps of many frames) its monitor thread redraws a bar left alone for
    # `maxinterval`, and the next update redraws it again: two lines where
    # one was due.
    kwargs.setdefault("miniters", 1)
    return LogBar(total=total, desc=desc, unit=unit, file=_LogLines(sys.stderr), **kwargs)


class _LogLines:
    """The stream of a bar in a log: every redraw a line of its own.

    tqdm starts each redraw with a carriage return (a terminal then writes
    over the line), so a log would hold one line of every redraw run
    together; clearing a bar writes spaces, and closing one a newline.
    """

    def __init__(self, stream):
        self.stream = stream

    def write(self, text: str) -> None:
        if text.startswith("\r"):
            line = text[1:].rstrip()
            if line:  # Clearing the bar (tqdm.write, close) writes nothing.
                self.stream.write(line + "\n")
        elif text != "\n":  # The newline that ends a closed bar: its line has ended.
            self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()
