"""benchmarks.first_request: each case runs in a fresh process and reports its first calls."""

from __future__ import annotations

import pytest

from benchmarks.first_request import CALLS, run_case


@pytest.mark.parametrize("case", ["cold", "warmed", "lab"])
def test_each_case_reports_its_first_calls(case: str) -> None:
    result = run_case(case)
    assert result["case"] == case and len(result["calls_ms"]) == CALLS
    assert all(ms > 0 for ms in result["calls_ms"])
    assert ("classify()" in result.get("what", "")) == (case != "lab")
