"""Whether two reports played the same episodes: per game and policy, the
returns and lengths, episode by episode, and the aggregate with its interval.

    python -m benchmarks.same_episodes RUN_A/report.json RUN_B/report.json \
        [--output=benchmarks/scale/eval_split.md]

For an evaluation split over workers (`--eval_workers`) against the same
evaluation in one piece: the protocol promises the same episodes, so every
row should say "identical"; the seconds columns are how long each took (on
a shared machine they are not a speed figure). Exits 1 if any differ.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def compare(a: dict, b: dict) -> tuple[list[str], bool]:
    """Markdown rows (game, policy, episodes, identical?, means, seconds) and
    whether everything matched."""
    rows, same = [], True
    for game in a["games"]:
        for who in ("teacher", "student"):
            x, y = a["games"][game][who], b["games"].get(game, {}).get(who, {})
            ok = (x.get("returns") == y.get("returns")
                  and x.get("lengths_agent_steps") == y.get("lengths_agent_steps"))
            same &= ok
            rows.append(f"| {game} | {who} | {len(x.get('returns', []))} | "
                        f"{'identical' if ok else 'DIFFERENT'} | {x['mean']:,.2f} / "
                        f"{y.get('mean', float('nan')):,.2f} | {x.get('seconds', 0):.0f} / "
                        f"{y.get('seconds', 0):.0f} |")
    ga, gb = (r.get("geometric_mean_percent_of_teacher") for r in (a, b))
    ca, cb = (r.get("geometric_mean_percent_of_teacher_ci") for r in (a, b))
    same &= ga == gb and ca == cb
    verdict = "identical" if ga == gb and ca == cb else "DIFFERENT"

    def fmt(g, c):
        return "n/a" if g is None else f"{g:.2f} [{c[0]:.2f}, {c[1]:.2f}]" if c else f"{g:.2f}"

    rows.append(f"| geometric mean % of teacher | | | {verdict} | {fmt(ga, ca)} / "
                f"{fmt(gb, cb)} | |")
    return rows, same


def main(argv: list[str]) -> int:
    args = [x for x in argv if not x.startswith("--output=")]
    out = next((x.split("=", 1)[1] for x in argv if x.startswith("--output=")), None)
    if len(args) != 2:
        print("usage: python -m benchmarks.same_episodes A/report.json B/report.json "
              "[--output=FILE.md]", file=sys.stderr)
        return 2
    a, b = (json.loads(Path(p).read_text()) for p in args)
    rows, same = compare(a, b)
    text = "\n".join([
        f"# Same episodes? `{args[0]}` (A) against `{args[1]}` (B)", "",
        f"B ran with evaluation_workers = {b.get('evaluation_workers') or 'none (one piece)'}; "
        f"A with {a.get('evaluation_workers') or 'none (one piece)'}.", "",
        "| game | policy | episodes | returns and lengths | mean A / B | seconds A / B |",
        "|---|---|---|---|---|---|", *rows, ""])
    print(text)
    if out:
        Path(out).write_text(text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
