"""The benchmark scripts run and print their summary lines (tiny settings; nothing is asserted about speed)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO, load_script


def _run(script, *args) -> str:
    p = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "torch " in p.stdout and "threads=" in p.stdout and "cpu:" in p.stdout
    return p.stdout


def test_train_speed_quick_runs():
    out = _run(
        "train_speed.py",
        "--benchmark",
        "synthetic",
        "--data",
        "synthetic",
        "--device",
        "cpu",
        "--quick",
        "--rounds",
        "1",
        "--warmup",
        "0",
        "--models",
        "2",
        "--threads",
        "1",
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY train_speed")]
    for variant in ("authors", "plain", "optimised", "ensemble", "ensemble-loop"):
        assert any(f"variant={variant} " in ln for ln in lines), out
    assert any("optimised/authors=" in ln and "optimised/plain=" in ln for ln in lines), out


def test_score_speed_quick_runs():
    out = _run(
        "score_speed.py",
        "--configs",
        "synthetic,celeba",
        "--quick",
        "--images",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY score_speed")]
    assert any("image=1x16x16" in ln for ln in lines) and any("image=3x64x64" in ln for ln in lines), out
    assert all("img_per_s=" in ln for ln in lines)
    out = _run(
        "score_speed.py",
        "--configs",
        "synthetic",
        "--quick",
        "--images",
        "4",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--compare-layouts",
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY score_speed")]
    assert any("layout=NCHW" in ln for ln in lines) and any("layout=channels_last" in ln for ln in lines), out
    assert any("channels_last_speedup fresh=" in ln for ln in lines), out


def test_layout_auc_runs_paired_trainings():
    out = _run(
        "layout_auc.py",
        "--architecture",
        "synthetic",
        "--classes",
        "0",
        "--runs",
        "0",
        "1",
        "--iterations",
        "2",
        "--threads",
        "1",
    )
    lines = [ln for ln in out.splitlines() if ln.startswith("SUMMARY layout_auc")]
    assert sum("channels_last=" in ln for ln in lines) == 2 and "run_to_run_sd_plain=" in lines[-1], out


def test_grid_throughput_compares_side_by_side_jobs_with_one_multithreaded_job():
    out = _run(
        "grid_throughput.py",
        "--benchmark",
        "synthetic",
        "--vgg",
        "paper",
        "--cores",
        "2",
        "--repeats",
        "1",
        "--rounds",
        "1",
        "--warmup",
        "0",
    )
    per_job = re.search(r"side-by-side s/it per job ([0-9.]+), ([0-9.]+) -> ([0-9.]+) model-it/s", out)
    one = re.search(r"one job at 2 threads ([0-9.]+) s/it -> ([0-9.]+) model-it/s", out)
    summary = re.search(
        r"SUMMARY grid_throughput .* side_by_side=([0-9.]+) one_job=([0-9.]+) model-it/s; "
        r"one_job/side_by_side=([0-9.]+)x",
        out,
    )
    assert per_job and one and summary, out
    a, b, total = map(float, per_job.groups())
    assert abs(total - (1 / a + 1 / b)) < 1e-2 * total  # throughput adds over the jobs side by side
    assert abs(float(one.group(2)) - 1 / float(one.group(1))) < 1e-2 * float(one.group(2))
    sbs, oj, ratio = map(float, summary.groups())
    assert sbs == total and oj == float(one.group(2)) and abs(ratio - oj / sbs) <= 0.006


def _csv(tmp_path, *rows):
    path = tmp_path / "summary.csv"
    path.write_text("module,run,mutants,tested,equivalent,killed\n" + "".join(r + "\n" for r in rows))
    return path


def test_the_mutation_total_of_whole_runs_is_their_weighted_share_without_spread(tmp_path):
    """Whole runs only: killed / non-equivalent over all modules together, computed here by hand."""
    mt = load_script("benchmarks/mutation_total.py")
    rows = mt.load(_csv(tmp_path, "a.py,whole,100,100,10,81", "b.py,whole,50,50,0,49"))
    est, low, high = mt.total(rows)
    assert est == low == high == pytest.approx((81 + 49) / (90 + 50))


def test_a_sampled_module_spreads_the_total_and_more_samples_narrow_it(tmp_path):
    mt = load_script("benchmarks/mutation_total.py")
    widths = []
    for tested, killed in ((20, 18), (200, 180)):
        rows = mt.load(_csv(tmp_path, "a.py,whole,100,100,0,100", f"b.py,sample,300,{tested},0,{killed}"))
        est, low, high = mt.total(rows)
        assert est == pytest.approx((100 + 300 * 0.9) / 400) and low < est < high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


@pytest.mark.parametrize(
    "row, needle",
    [
        ("a.py,whole,10,10,2,9", "killed <= tested - equivalent"),
        ("a.py,sample,10,10,0,9", "run 'whole'"),
        ("a.py,whole,10,ten,0,9", "integer columns"),
    ],
)
def test_a_bad_mutation_summary_row_is_refused_with_its_line(tmp_path, row, needle):
    mt = load_script("benchmarks/mutation_total.py")
    with pytest.raises(SystemExit, match=f"summary.csv:3: .*{re.escape(needle)}"):
        mt.load(_csv(tmp_path, "b.py,whole,5,5,0,5", row))


def test_tests_readme_quotes_the_current_mutation_total():
    mt = load_script("benchmarks/mutation_total.py")
    assert mt.sentence(*mt.total(mt.load(mt.DEFAULT))) in (REPO / "tests" / "README.md").read_text()
