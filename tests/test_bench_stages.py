"""benchmarks.stages: each step timed in a fresh process, for this tree and for a git revision's code."""

from __future__ import annotations

import subprocess

from benchmarks.common import REPO
from benchmarks.stages import STEPS, compare


def test_both_trees_get_every_step_and_the_worktree_is_removed() -> None:
    result = compare(rounds=1, calls=3, against="HEAD")
    assert set(result["median_ms"]) == {"this tree", "HEAD"}
    for figures in result["median_ms"].values():
        assert list(figures) == list(STEPS) and all(ms > 0 for ms in figures.values())
    # A step cannot cost more than the whole classification it is part of (the header and the decode are
    # parts of it, three calls each are enough for that).
    assert figures["header"] < figures["classify()"]
    worktrees = subprocess.run(["git", "-C", str(REPO), "worktree", "list"], capture_output=True, text=True).stdout
    assert "stages-" not in worktrees
