"""SIGKILL at many points (issue 29 §3): for each camim command, kill it at ``--points`` points (half at the
production failpoints it reaches, named with the hit, half at a delay drawn uniformly over its uninterrupted
duration; seeded), run the same command again, and check that the rerun finishes with outputs equal to an
uninterrupted run's (tests/faults/harness.py says what "equal" is per command)::

    python benchmarks/kill_points.py --points 12 --commands train caption --seed 0 [--json out.json] [--exec]

Prints one row per command: points tried, killed mid-run (the others finished before the kill came), reruns
that finished, reruns whose outputs were equal, and each failing point with what went wrong. A point that
fails is recorded and the run goes on; the exit status is 1 when any rerun failed or differed. Commands are
forked from a fork server (the imports paid once, so the delays land in the command's work); ``--exec`` starts
each as ``python -m camim`` instead (about 9 s of imports per run on 2 shared cores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.faults is the harness

from tests.faults.commands import COMMANDS  # noqa: E402
from tests.faults.harness import Launcher, draw_points, reference_run, run_trial, scenarios  # noqa: E402


def run_command(name, scenario, launcher, work: Path, points: int, seed: int) -> dict:
    """One command's row: its reference run, then ``points`` trials of one kill point each."""
    try:
        reference = reference_run(scenario, launcher, work)
    except Exception as exc:  # noqa: BLE001 - a command that fails uninterrupted is one failed row
        return {"command": name, "error": f"the uninterrupted run failed: {str(exc)[:300]}", "trials": []}
    rng = random.Random(f"{seed}:{name}")
    trials = []
    for point in draw_points(reference, points, rng):
        try:
            result = run_trial(scenario, reference, [point], launcher, work)
            trials.append(
                {
                    "point": str(point),
                    "outcome": result.outcomes[0],
                    "finished": result.finished,
                    "equal": result.equal,
                    "problems": result.problems,
                }
            )
        except Exception as exc:  # noqa: BLE001 - recorded, and the next point is tried
            trials.append(
                {
                    "point": str(point),
                    "outcome": "harness error",
                    "finished": False,
                    "equal": False,
                    "problems": [f"{type(exc).__name__}: {str(exc)[:300]}"],
                }
            )
    return {
        "command": name,
        "seconds": round(reference.seconds, 2),
        "failpoints_reached": reference.hits,
        "trials": trials,
    }


def summarise(row: dict) -> dict:
    trials = row["trials"]
    failures = [t for t in trials if not (t["finished"] and t["equal"] and not t["problems"])]
    return {
        "tried": len(trials),
        "at failpoints": sum(not t["point"].startswith("after ") for t in trials),
        "killed": sum(t["outcome"] == "killed" for t in trials),
        "finished": sum(t["finished"] for t in trials),
        "equal": sum(t["finished"] and t["equal"] and not t["problems"] for t in trials),
        "failures": [f"{t['point']}: {'; '.join(t['problems']) or t['outcome']}" for t in failures],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| command | uninterrupted s | points tried (at failpoints + random) | killed mid-run | reruns finished "
        "| outputs equal | failures |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['command']} | - | 0 | 0 | 0 | 0 | {row['error']} |")
            continue
        s = summarise(row)
        failures = "<br>".join(sorted(set(s["failures"]))) or "-"
        tried = f"{s['tried']} ({s['at failpoints']} + {s['tried'] - s['at failpoints']})"
        cells = [row["command"], row["seconds"], tried, s["killed"], s["finished"], s["equal"], failures]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=12, help="kill points per command")
    parser.add_argument("--points-for", nargs="+", default=[], metavar="COMMAND=N", help="e.g. train=30")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write every trial (point, outcome, problems) here")
    parser.add_argument("--exec", action="store_true", help="start each run as python -m camim")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)
    points = {name: args.points for name in args.commands}
    for item in args.points_for:
        name, _, n = item.partition("=")
        if name not in points or not n.isdigit():
            parser.error(
                f"--points-for {item!r}: expected COMMAND=N, COMMAND one of {', '.join(args.commands)}"
            )
        points[name] = int(n)
    start = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kill_points.") as tmp:
        root = args.work or Path(tmp)
        with (
            Launcher(exec_=args.exec) as launcher,
            scenarios(root / "inputs", launcher, args.commands) as built,
        ):
            for name in args.commands:
                rows.append(
                    run_command(name, built[name], launcher, root / "work" / name, points[name], args.seed)
                )
                done = rows[-1].get("error") or summarise(rows[-1])
                print(f"{name}: {done}", file=sys.stderr, flush=True)
    print(table(rows))
    how = "python -m camim" if args.exec else "forked"
    print(f"\npoints per command {points}, seed {args.seed}, {how} runs, {time.monotonic() - start:.0f} s")
    if args.json:
        record = {"points": points, "seed": args.seed, "exec": args.exec, "commands": rows}
        args.json.write_text(json.dumps(record, indent=1))
    return 1 if any("error" in r or summarise(r)["failures"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
