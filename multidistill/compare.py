"""Compares runs: one Markdown table and one plot from their evaluation reports.

    python -m multidistill.compare runs/A runs/B [--output_dir=comparison]

Each argument is a run directory holding `report.json` (what `train.py` and
`multidistill.evaluate` write) or the path of a report itself. Writes
`comparison.md` (per game the student's % of its teacher with its interval,
the geometric mean over games with its interval, wall-clock, student size,
the command and the commit of each run) and `comparison.png` (the same
ratios as a dot plot), and prints the table. The README's result tables are
this command's output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from absl import flags

from multidistill import cli, files

FLAGS = flags.FLAGS


def load_report(path: str | os.PathLike) -> dict:
    """The report of a run directory (its report.json) or of a report file."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.exists():
        raise ValueError(f"{path}: no report found (expected a run directory holding "
                         "report.json, or a report.json file); run train.py or "
                         "python -m multidistill.evaluate first")
    try:
        report = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: not a JSON report ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("games"), dict):
        found = (f"keys {sorted(report)[:8]}" if isinstance(report, dict)
                 else f"a JSON {type(report).__name__}")
        raise ValueError(f"{p}: not a multidistill report (expected a 'games' table, "
                         f"found {found})")
    return report


def _ci(value, ci, digits=1) -> str:
    if value is None:
        return "n/a"
    if not ci:
        return f"{value:,.{digits}f}"
    return f"{value:,.{digits}f} [{ci[0]:,.{digits}f}, {ci[1]:,.{digits}f}]"


def _minutes(seconds) -> str:
    return "n/a" if seconds is None else f"{seconds / 60:.1f} min"


def comparison_markdown(reports: dict[str, dict]) -> str:
    """The Markdown table of `reports` (label -> report), one row per run."""
    games = []
    for r in reports.values():
        games += [g for g in r["games"] if g not in games]
    head = (["run"] + [f"{g} % of teacher" for g in games]
            + ["geometric mean % of teacher", "wall-clock (build / distil / eval)",
               "student parameters", "commit"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for label, r in reports.items():
        cells = [label]
        for g in games:
            row = r["games"].get(g)
            cells.append("—" if row is None else _ci(
                row.get("student_percent_of_teacher"), row.get("student_percent_of_teacher_ci")))
        cells.append(_ci(r.get("geometric_mean_percent_of_teacher"),
                         r.get("geometric_mean_percent_of_teacher_ci")))
        t = r.get("timing") or {}
        if t:
            # Distillation: the run's total over its sessions (a resumed run), or
            # this session's stage where that is longer (collection rounds count
            # in the stage; reports before 2026-11-29 left them out of the total).
            distil = [t[k] for k in ("run_distill_seconds", "distill_seconds") if k in t]
            distil = max(distil) if distil else None
            total = _minutes(t.get("total_seconds"))
            # A resumed run's total counts its last session only: where its
            # stages add up to more, their sum (a lower bound) is shown.
            stages = [t.get("build_seconds"), distil, t.get("eval_seconds")]
            if None not in stages and sum(stages) > t.get("total_seconds", 0):
                total = "≥" + _minutes(sum(stages))
            cells.append(f"{total} ({_minutes(t.get('build_seconds'))}"
                         f" / {_minutes(distil)} / {_minutes(t.get('eval_seconds'))})")
        else:
            cells.append("n/a")
        n = r.get("student_parameters")
        tp = list((r.get("teacher_parameters") or {}).values())
        cells.append("n/a" if not n else f"{n:,}" + (
            f" ({100 * n / (sum(tp) / len(tp)):.1f} % of a teacher)" if tp else ""))
        cells.append(f"`{r['commit']}`" if r.get("commit") else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
        episodes = (r.get("protocol") or {}).get("episodes_per_game") or {}
        note = f"- **{label}**"
        if r.get("command"):
            note += f": `{r['command']}`"
        if episodes:
            note += "; episodes per game and policy: " + ", ".join(
                f"{g} {n}" for g, n in episodes.items())
        notes.append(note)
    conf = next(iter(reports.values())).get("statistics", {}).get("confidence", 0.95)
    return ("\n".join(lines) + "\n\n"
            + f"Mean [{100 * conf:.0f} % bootstrap interval]; student and teacher evaluated on "
              "the same seeds, paired by episode (`multidistill.statistics`). Runs whose "
              "intervals overlap are a tie.\n\n" + "\n".join(notes) + "\n")


def compare(paths: list[str], output_dir: str | os.PathLike,
            labels: list[str] | None = None) -> tuple[Path, Path | None, str]:
    """Writes comparison.md and comparison.png for the runs at `paths`.

    Returns:
      (markdown path, plot path or None, the table).
    """
    from multidistill import summaries

    if labels and len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} runs, {len(paths)} were given")
    reports = {}
    for k, p in enumerate(paths):
        label = labels[k] if labels else (Path(p).name if Path(p).is_dir()
                                          else Path(p).parent.name)
        if label in reports:
            label = f"{label} ({k + 1})"
        reports[label] = load_report(p)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = comparison_markdown(reports)
    png = summaries.plot_percent_of_teacher(reports, out / "comparison.png")
    md = "# multidistill: run comparison\n\n" + table
    if png is not None:
        md += "\n![student % of teacher per game](comparison.png)\n"
    md_path = files.atomic_write_text(out / "comparison.md", md)
    return md_path, png, table


def define_flags():
    flags.DEFINE_string("output_dir", "comparison",
                        "Folder for comparison.md and comparison.png (created if needed).")
    flags.DEFINE_list("labels", [],
                      "Names of the runs in the table, in argument order (default: the run "
                      "directories' names).")
    cli.define_verbose_flag()


def main(argv):
    paths = argv[1:]
    cli.require(bool(paths), "give one or more run directories (or report.json files), "
                             "e.g. python -m multidistill.compare runs/A runs/B")
    md_path, png, table = compare(paths, FLAGS.output_dir, FLAGS.labels or None)
    print(table)
    print(f"comparison: {md_path}" + (f", {png}" if png else ""))


if __name__ == "__main__":
    define_flags()
    cli.run(main, positional=True)
