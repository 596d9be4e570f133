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


def test_a_log_gets_one_line_per_redraw_and_no_monitor_redraws(monkeypatch):
    """Updates of many frames every half second for 10 minutes: a line every
    30 s, each ending in a newline (no carriage returns), and nothing for
    tqdm's monitor thread to redraw in between (it redraws bars whose
    `miniters` > 1)."""
    import tqdm.std

    now = [1000.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: now[0])
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    bar = progress.bar(1_200_000, "train pong dqn", "frame", unit_scale=True)
    for _ in range(1200):
        now[0] += 0.5
        bar.update(1000)
        bar.set_postfix(ret="-20.0")
        assert bar.miniters == 1  # The monitor's condition for a redraw never holds.
    bar.write("an evaluation")  # A message goes to stdout; the log gets no extra redraw.
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert all(line.startswith("train pong dqn:") for line in lines), lines
    assert 20 <= len(lines) <= 22, lines  # 600 s / 30 s, the first and the closing line.
    assert "1.20M/1.20M" in lines[-1] and "ret=-20.0" in lines[-1]
