"""Progress bars: live on a terminal, a line every half minute in a log.

Every long loop of multidistill (dataset building, distillation, evaluation,
teacher training) shows a tqdm bar with its rate and ETA on stderr. On a
terminal it redraws as tqdm does (10 times a second at most); when stderr is
a file or a pipe (a CI log, `nohup ... > log`), it redraws at most every
`LOG_INTERVAL_S` seconds, so a 20-minute run writes tens of lines, not tens
of thousands.
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
    return LogBar(total=total, desc=desc, unit=unit, dynamic_ncols=True, **kwargs)
