"""The benchmark suite: runs end to end on tiny sizes and reports every figure.

Timings are never compared with the targets here: a test machine's numbers
mean nothing; the test checks that every figure is measured and written.
"""

import dataclasses
import math

import pytest
from conftest import REPO, run_cli


@pytest.fixture()
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))  # `benchmarks` is not an installed package.
    from benchmarks import run

    return run


def _numbers(summary: dict) -> list[float]:
    """Every number of the summary (figures, throughputs, students, memory)."""
    out = [v for per_threads in summary["figures"].values() for v in per_threads.values()]
    out += [v for per_threads in summary["raw"].values() for v in per_threads.values()]
    out += [v for student in summary["compressed"].values() for v in student.values()]
    out += list(summary["speedups"].values())
    return out + list(summary["memory"].values())


def _table_value(text: str, row_start: str) -> float:
    """The second column of the first Markdown table row starting with `row_start`."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {row_start}"))
    return float(line.split("|")[2].strip().replace(",", ""))


def test_quick_benchmark_measures_and_writes_every_figure(bench, tmp_path):
    output = tmp_path / "results.md"
    summary = bench.run_benchmark(bench.QUICK, [1, 2], output, command="test")["summary"]

    assert set(summary["figures"]) == {f.name for f in bench.FIGURES}
    numbers = _numbers(summary)
    assert numbers and all(math.isfinite(x) and x > 0 for x in numbers), summary
    assert set(summary["compressed"]) == {"dqn", "net1", "net2", "net3", "tiny"}

    text = output.read_text()
    for fig in bench.FIGURES:  # Headline table: a finite positive number per figure.
        value = _table_value(text, fig.name)
        assert math.isfinite(value) and value > 0, fig.name
    for _, quantity, unit in bench.RAW_QUANTITIES:
        assert f"| {quantity} | {unit} |" in text
    for size in summary["compressed"]:
        assert f"| {size} |" in text
    assert set(summary["speedups"]) == {label for label, _, _ in bench.SPEEDUPS}
    for label, _, _ in bench.SPEEDUPS:  # Precision and XLA against the alternatives.
        assert math.isfinite(_table_value(text, label)), label
    assert summary["precision"] in ("float32", "mixed_bfloat16")
    assert f"({summary['precision']} here" in text
    for heading in ("## Figures by thread count", "## Raw throughputs", "## Machine",
                    "## Precision and XLA",
                    "Bytes on disk per 100,000 steps", "scaling 2/1", "Total wall time"):
        assert heading in text


def test_flags_override_the_quick_sizes(bench):
    from absl import flags

    fv = flags.FlagValues()
    bench.define_flags(fv)
    fv(["run", "--quick", "--build_steps=300", "--memory_steps=50,10"])
    assert bench.sizes_from_flags(fv) == dataclasses.replace(
        bench.QUICK, build_steps=300, memory_steps=(50, 10))
    fv = flags.FlagValues()
    bench.define_flags(fv)
    fv(["run"])
    assert bench.sizes_from_flags(fv) == bench.Sizes()
    with pytest.raises(ValueError, match="larger first"):
        dataclasses.replace(bench.QUICK, memory_steps=(10, 50))


def test_help_names_units():
    _, out = run_cli(["-m", "benchmarks.run", "--help"])  # absl exits 1 after --help.
    assert "--build_steps" in out, out
    words = " ".join(out.split())  # Help lines wrap at the terminal's width.
    for unit in ("Agent steps", "Gradient steps", "emulator frames", "Thread counts"):
        assert unit in words


def test_default_batches_are_the_products(bench):
    from multidistill import collect, evaluation

    assert bench.Sizes().num_envs == collect.CollectConfig().num_envs
    assert bench.Sizes().eval_num_envs == evaluation.EvalProtocol().num_envs


def test_alternating_timer_gives_each_run_its_steps_in_turns(bench, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    calls = []

    def consumer(name, seconds_per_batch):
        def consume(x, y):
            calls.append(name)
            clock[0] += seconds_per_batch
        return consume

    def batches(n):
        while True:
            yield {"game_id": [0] * n}, None

    rates = bench.alternating_samples_per_s(
        {"a": (batches(4), consumer("a", 0.5)), "b": (batches(2), consumer("b", 0.1))},
        warmup=1, steps=5, chunk=2)
    # Warm-up (untimed), then turns of 2, 2 and 1 batches, the order reversed each round.
    assert calls == ["a", "b"] + ["a"] * 2 + ["b"] * 2 + ["b"] * 2 + ["a"] * 2 + ["a", "b"]
    assert rates == pytest.approx({"a": 4 / 0.5, "b": 2 / 0.1})


def test_shard_speed_table_takes_ratios_within_each_repeat(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from benchmarks import shard_speed

    seconds = {"one worker": [10.0, 20.0], "two processes": [5.0, 16.0],
               "two Ray tasks": [20.0, 10.0]}
    table = shard_speed.markdown(seconds, 1_200, "pong", "python -m benchmarks.shard_speed")
    rows = table.splitlines()[-3:]
    # Medians 15.0, 10.5, 15.0 s; ratios per repeat (2.0, 1.25) and (0.5, 2.0).
    assert rows[0] == "| one worker | 15.0 | 80 | 1.00 |"
    assert rows[1] == "| two processes | 10.5 | 114 | 1.62 |"
    assert rows[2] == "| two Ray tasks | 15.0 | 80 | 1.25 |"
