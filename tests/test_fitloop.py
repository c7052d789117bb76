"""The fit loop's duration estimate and progress bar (piad.run.fitloop)."""

from __future__ import annotations

import re

from piad.run import fitloop
from piad.run.config import make_config
from piad.run.training import train


class Clock:
    """A fake clock advancing `step` seconds per call."""

    def __init__(self, step: float):
        self.t, self.step = 0.0, step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def messages(est: fitloop.DurationEstimate, iterations) -> list[tuple[int, str]]:
    return [(i, m) for i in iterations if (m := est.update(i))]


def test_estimate_after_ten_timed_iterations():
    # 2 s per iteration; the first iteration is not timed, so the estimate comes after iteration 11
    out = messages(fitloop.DurationEstimate(0, 1000, "cpu", clock=Clock(2.0)), range(1, 1001))
    assert [i for i, _ in out] == [11]
    remaining = 1000 - 11
    expected = f"about {round(remaining * 2.0 / 60)} min for the remaining {remaining} of 1000 iterations on cpu"
    assert expected in out[0][1]


def test_estimate_after_thirty_seconds_when_iterations_are_slow():
    out = messages(fitloop.DurationEstimate(100, 2000, "cuda", clock=Clock(12.0)), range(101, 2001))
    assert [i for i, _ in out] == [104]  # 3 timed iterations = 36 s >= 30 s
    assert f"about {1896 * 12 / 3600:.1f} h for the remaining 1896 of 2000 iterations on cuda" in out[0][1]


def test_no_estimate_for_a_run_about_to_finish():
    assert messages(fitloop.DurationEstimate(9, 10, "cpu", clock=Clock(60.0)), [10]) == []


def test_train_prints_its_estimated_duration(tmp_path, capsys):
    from piad.experiments.profiles import SMOKE_NETWORK

    cfg = make_config(
        "digits",
        {
            **SMOKE_NETWORK,
            "iterations": 14,
            "checkpoint_every": 14,
            "log_every": 7,
            "sample_every": 14,
            "vgg_weights": "random",
            "layer": "relu2_1",
            "feature_stats": None,
        },
    )
    train(cfg, tmp_path, progress=False)
    out = capsys.readouterr()
    m = re.search(
        r"piad: about (.+?) for the remaining (\d+) of 14 iterations on cpu \(([\d.e+-]+) s per "
        r"iteration over (\d+) iterations\)",
        out.out,
    )
    assert m, out.out
    remaining, per_iteration, timed = int(m.group(2)), float(m.group(3)), int(m.group(4))
    assert remaining == 14 - 1 - timed and 1 <= timed <= 10  # after 10 timed iterations, or 30 s
    # the printed duration is the rate times the remaining iterations (the rate is printed to 3 digits; on a loaded
    # machine the duration may print in minutes)
    assert m.group(1) in {fitloop.format_duration(remaining * per_iteration * f) for f in (0.995, 1.0, 1.005)}
    assert "IProgress" not in out.err and "Warning" not in out.err
