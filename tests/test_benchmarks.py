"""The benchmark scripts run and print their summary lines (tiny settings; nothing is asserted about speed)."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def _run(script, *args) -> str:
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                       timeout=300, cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "torch " in p.stdout and "threads=" in p.stdout and "cpu:" in p.stdout
    return p.stdout


def test_train_speed_quick_runs():
    out = _run("train_speed.py", "--benchmark", "synthetic", "--data", "synthetic", "--device", "cpu", "--quick",
               "--rounds", "1", "--warmup", "0", "--models", "2", "--threads", "1")
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY train_speed")]
    for variant in ("authors", "plain", "optimised", "ensemble", "ensemble-loop"):
        assert any(f"variant={variant} " in ln for ln in lines), out
    assert any("optimised/authors=" in ln and "optimised/plain=" in ln for ln in lines), out


def test_score_speed_quick_runs():
    out = _run("score_speed.py", "--configs", "synthetic,celeba", "--quick", "--images", "4", "--repeats", "1",
               "--threads", "1")
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY score_speed")]
    assert any("image=1x16x16" in ln for ln in lines) and any("image=3x64x64" in ln for ln in lines), out
    assert all("img_per_s=" in ln for ln in lines)
    out = _run("score_speed.py", "--configs", "synthetic", "--quick", "--images", "4", "--repeats", "1",
               "--threads", "1", "--compare-layouts")
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY score_speed")]
    assert any("layout=NCHW" in ln for ln in lines) and any("layout=channels_last" in ln for ln in lines), out
    assert any("channels_last_speedup fresh=" in ln for ln in lines), out


def test_layout_auc_runs_paired_trainings():
    out = _run("layout_auc.py", "--architecture", "synthetic", "--classes", "0", "--runs", "0", "1",
               "--iterations", "2", "--threads", "1")
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY layout_auc")]
    assert sum("channels_last=" in ln for ln in lines) == 2 and "run_to_run_sd_plain=" in lines[-1], out
