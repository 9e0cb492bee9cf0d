"""The `paxq sim` command: settings first, exit status, replay line, and the installed script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from planted import QuorumTooSmall

from paxq.broker.sim import cluster
from paxq.ops.cli import main


def test_one_seed_prints_its_settings_first_and_exits_zero(capsys: pytest.CaptureFixture) -> None:
    assert main(["sim", "--seed", "3", "--nodes", "3", "--steps", "2000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("settings: seed=3 nodes=3 steps=2000 ")
    assert "loss=" in lines[0] and "clock_skew=" in lines[0]
    assert lines[1] == "replay:   paxq sim --seed 3 --nodes 3 --steps 2000"
    assert lines[-1].startswith("ok: seed 3:")


def test_many_seeds_are_summarized(capsys: pytest.CaptureFixture) -> None:
    assert (
        main(
            ["sim", "--seed", "10", "--seeds", "3", "--nodes", "3", "--steps", "800", "--jobs", "1"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("settings: seeds 10..12 nodes=3 steps=800 faults=on jobs=1")
    assert "3 seeds, 0 with a violation" in out


def test_a_violation_exits_non_zero_and_says_how_to_replay(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cluster, "Replica", QuorumTooSmall)
    assert (
        main(
            ["sim", "--seed", "0", "--seeds", "5", "--nodes", "3", "--steps", "3000", "--jobs", "1"]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert "VIOLATION: seed" in out
    assert "replay: paxq sim --seed" in out
    assert "with a violation" in out


@pytest.mark.parametrize(
    "argv", [["sim", "--nodes", "0"], ["sim", "--seeds", "0"], ["sim", "--steps", "x"], []]
)
def test_bad_arguments_are_refused(argv: list[str]) -> None:
    assert main(argv) == 2


def test_the_installed_console_script_runs_the_simulator() -> None:
    script = Path(sys.executable).parent / "paxq"
    done = subprocess.run(
        [str(script), "sim", "--seed", "1", "--nodes", "3", "--steps", "500"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("settings: seed=1 ")
