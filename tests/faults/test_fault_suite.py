"""A bounded run of the fault suite (`make faults` runs longer ones): real nodes, every fault
kind in the draw, the whole workload, and the checker over what it saw."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from runner import Settings, run, summary

pytestmark = pytest.mark.slow


async def test_a_bounded_run_under_faults_loses_duplicates_and_overlaps_nothing(
    tmp_path: Path,
) -> None:
    settings = Settings(seconds=45.0, seed=7)
    with trio.fail_after(300):  # the fault phase, start-ups, the drain and the final read
        report, history = await run(settings, tmp_path)
    assert report.drained, summary(report)
    assert report.anomalies == [], summary(report)
    assert len(report.faults) >= 6 and report.leader_changes >= 1, summary(report)
    # Every part of the workload did its share.
    assert report.acknowledged > 1000 and len(history.subscribers) == 3
    workers = {claim.worker for claim in history.claims}
    assert workers == {"consumer", "pool", "bare", "sub"}, workers
