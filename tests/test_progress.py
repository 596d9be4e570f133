"""Progress bars redraw live on a terminal and rarely in a log."""

import io
import sys

from multidistill import progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_every_half_minute(monkeypatch):
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress.bar(1000, "build pong", "step")
    assert bar.mininterval == progress.LOG_INTERVAL_S == 30.0
    for i in range(1000):
        bar.update(1)  # Well within 30 s: no redraw between the first and the last,
        bar.set_postfix(episodes=i)  # not even for a new postfix (tqdm redraws on it).
    bar.close()
    assert log.getvalue().count("build pong") <= 3
    assert "episodes=999" in log.getvalue()  # The last postfix shows when it closes.


def test_a_terminal_gets_a_live_bar(monkeypatch):
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert progress.on_terminal()
    bar = progress.bar(10, "distill", "step", initial=2)
    assert bar.mininterval == 0.1 and bar.n == 2
    bar.close()
    assert not progress.on_terminal(io.StringIO())
