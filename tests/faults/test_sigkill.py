"""SIGKILL at any moment (issue 29 §3): each command is killed at a failpoint of its writes (``CAMIM_FAILPOINT``)
and at a seeded random moment, run again, and must leave what an uninterrupted run leaves (tests/faults/harness.py:
the same scores, predictions and weights; caches whole and verified; no duplicate, missing or torn line, no
stray temporary file). ``benchmarks/kill_points.py`` tries many more points."""

from __future__ import annotations

import random

import pytest
from tests.faults.harness import KillPoint, run_trial

RANDOM = "random"  # a delay drawn uniformly over the uninterrupted run's duration (seeded)

# (command, the kill points of successive runs, a line the last run prints); each chain ends with a run that
# is not killed, whose outputs are compared with the uninterrupted run's
CHAINS = [
    ("train", ["checkpoint.before_rename:3", RANDOM], None),
    ("train", ["atomic_path.before_replace:5", RANDOM], None),  # a new best saved, its last.ckpt not yet
    ("train", ["atomic_path.after_replace:10"], None),  # trained; model/ written, the rest of the folder not
    ("pretrain", ["checkpoint.before_rename:2", RANDOM], None),
    ("pretrain", ["atomic_path.after_replace:8"], None),  # the card written, its checkpoints not yet removed
    ("cache-images", ["atomic_path.before_replace:1", RANDOM], None),  # rows written, the index not in place
    ("caption", ["jsonl.torn_line:2"], "1 unfinished last line (a killed run's) cut off the cache"),
    ("caption", ["jsonl.before_flush:3", RANDOM], None),
    ("zero-shot", ["jsonl.torn_line:2"], "answers.jsonl: an unfinished last line (a killed run's) cut off"),
    ("zero-shot", ["atomic_path.before_replace:2", RANDOM], None),  # answers whole, predictions.jsonl not
    ("predict", ["jsonl.before_flush:3", RANDOM], None),
    ("prepare", ["jsonl.torn_line:3"], "torn_lines_dropped: 1"),
    ("prepare", ["atomic_path.before_replace:4", RANDOM], None),  # a crop written, not yet in place
]


def _points(command: str, points: list[str], seconds: float) -> list[KillPoint]:
    rng = random.Random(f"sigkill:{command}:{':'.join(points)}")
    return [
        KillPoint(delay=round(rng.uniform(0, seconds), 3)) if p == RANDOM else KillPoint(failpoint=p)
        for p in points
    ]


@pytest.mark.parametrize(
    ("command", "points", "says"), CHAINS, ids=[f"{c}-{'+'.join(p)}" for c, p, _ in CHAINS]
)
def test_a_command_killed_at_these_points_reruns_to_the_outputs_of_an_uninterrupted_run(
    command, points, says, commands, launcher, reference, work_root
):
    ref = reference(command)
    result = run_trial(
        commands[command], ref, _points(command, points, ref.seconds), launcher, work_root / command
    )
    for point, outcome in zip(points, result.outcomes):
        # a failpoint always kills; a random moment may come after the run finished (then it was not killed)
        assert outcome == "killed" or (point == RANDOM and outcome == "finished before the kill"), outcome
    assert result.problems == [] and result.finished and result.equal
    if says is not None:
        assert says in result.last.stdout + result.last.stderr  # the torn line was dropped and counted


def test_predict_killed_mid_write_reruns_to_the_outputs_of_an_uninterrupted_run(
    commands, launcher, reference, work_root
):
    ref = reference("predict")
    point = KillPoint(failpoint="jsonl.torn_line:8")  # the last batch (input lines 15-16), half written
    result = run_trial(commands["predict"], ref, [point], launcher, work_root / "predict")
    assert result.outcomes == ["killed"] and result.finished and result.equal, result.problems
