"""The fit loop (piad.run.fitloop): its cadence, clean stops on signals, the duration estimate and the progress bar.

Most tests drive `fit` with a run object that records what the loop asks of it (no training, milliseconds).
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from types import SimpleNamespace

import pytest
from conftest import REPO

from piad.errors import TrainingInterrupted
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


class RecordingRun:
    """The run object `fit` drives, recording each call as (name, iteration); `during(run)` runs inside each
    iteration (after the count moved on, as Trainer's does), `abandon_at` makes that iteration raise
    IterationAbandoned before it counts (as the critic loop does)."""

    def __init__(
        self,
        iterations=10,
        log_every=3,
        sample_every=4,
        checkpoint_every=5,
        start=0,
        elapsed=0.0,
        progress=False,
        during=None,
        abandon_at=None,
        abandon_args=(),
    ):
        self.cfg = SimpleNamespace(
            iterations=iterations,
            log_every=log_every,
            sample_every=sample_every,
            checkpoint_every=checkpoint_every,
            n_dis=7,
        )
        self.iteration, self.elapsed, self.progress, self.device = start, elapsed, progress, "cpu"
        self.during, self.abandon_at, self.abandon_args = during, abandon_at, abandon_args
        self.events: list[tuple[str, int]] = []

    def train_iteration(self):
        if self.iteration + 1 == self.abandon_at:
            os.kill(os.getpid(), signal.SIGINT)
            raise fitloop.IterationAbandoned(*self.abandon_args)
        self.iteration += 1
        self.events.append(("iteration", self.iteration))
        if self.during:
            self.during(self)

    def check(self):
        self.events.append(("check", self.iteration))

    def log(self):
        self.events.append(("log", self.iteration))

    def save_samples(self):
        self.events.append(("samples", self.iteration))

    def checkpoint(self):
        self.events.append(("checkpoint", self.iteration))

    def progress_label(self):
        return "digits 1/0"

    def progress_postfix(self):
        return {"lam": 2.5}

    def checkpoint_hint(self):
        return "out/checkpoints/latest.pt"

    def names(self, iteration):
        return [name for name, i in self.events if i == iteration]


# iterations 10, log every 3, samples every 4, checkpoint every 5, written out by hand: the last iteration does all
# of them, and a checkpoint is always preceded by a divergence check
CADENCE = {
    1: ["iteration"],
    2: ["iteration"],
    3: ["iteration", "check", "log"],
    4: ["iteration", "samples"],
    5: ["iteration", "check", "checkpoint"],
    6: ["iteration", "check", "log"],
    7: ["iteration"],
    8: ["iteration", "samples"],
    9: ["iteration", "check", "log"],
    10: ["iteration", "check", "log", "samples", "check", "checkpoint"],
}


def test_the_loop_logs_samples_and_checkpoints_on_the_configs_cadence_and_after_the_last_iteration():
    run = RecordingRun()
    fitloop.fit(run)
    assert run.iteration == 10
    assert {i: run.names(i) for i in range(1, 11)} == CADENCE
    assert len(run.events) == sum(map(len, CADENCE.values()))


def test_a_resumed_run_continues_the_count_and_keeps_the_cadence_of_the_whole_run():
    run = RecordingRun(start=6)
    fitloop.fit(run)
    assert [i for name, i in run.events if name == "iteration"] == [7, 8, 9, 10]
    assert {i: run.names(i) for i in range(7, 11)} == {i: CADENCE[i] for i in range(7, 11)}


def test_a_run_of_more_than_256_iterations_ends_with_its_last_checkpoint():
    """Above 256, ints are distinct objects in CPython: the last iteration is found by value."""
    run = RecordingRun(iterations=300, log_every=1000, sample_every=1000, checkpoint_every=7)
    fitloop.fit(run)
    assert [i for name, i in run.events if name == "checkpoint"] == [*range(7, 300, 7), 300]


def test_the_text_bar_where_ipywidgets_is_missing_the_auto_bar_where_it_is(monkeypatch):
    """tqdm.auto picks a notebook widget inside Jupyter, which without ipywidgets warns "IProgress not found"."""
    import importlib.util

    import tqdm.auto
    import tqdm.std

    class AutoBar(tqdm.std.tqdm):
        pass

    monkeypatch.setattr(tqdm.auto, "tqdm", AutoBar)
    find_spec = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a, installed=installed: (
                (find_spec("tqdm") if installed else None) if name == "ipywidgets" else find_spec(name, *a)
            ),
        )
        bar = fitloop._progress_bar(RecordingRun(progress=True))
        bar.close()
        assert (type(bar) is AutoBar) is installed and isinstance(bar, tqdm.std.tqdm)


def test_a_finished_run_runs_no_iteration():
    run = RecordingRun(start=10)
    fitloop.fit(run)
    assert run.events == []


def test_elapsed_time_continues_from_the_resumed_runs():
    run = RecordingRun(elapsed=1000.0)
    before = time.perf_counter()
    fitloop.fit(run)
    assert 1000.0 <= run.elapsed <= 1000.0 + (time.perf_counter() - before)


STOPS = [signal.SIGINT, signal.SIGTERM] + ([signal.SIGUSR2] if hasattr(signal, "SIGUSR2") else [])


@pytest.mark.parametrize("signum", STOPS, ids=lambda s: signal.Signals(s).name)
def test_a_stop_signal_ends_the_loop_after_its_iteration_with_a_checkpoint(signum):
    """Ctrl-C, `kill` and Slurm's warning (SIGUSR2) stop training cleanly: the iteration running when the signal
    came finishes, on its cadence, then a checkpoint is written and TrainingInterrupted names the signal."""
    before = signal.getsignal(signum)
    run = RecordingRun(during=lambda run: run.iteration == 4 and os.kill(os.getpid(), signum))
    with pytest.raises(TrainingInterrupted) as e:
        fitloop.fit(run)
    assert run.iteration == 4 and run.events[-4:] == [("iteration", 4), ("samples", 4), ("check", 4), ("checkpoint", 4)]
    message = str(e.value)
    assert f"signal {int(signum)} at iteration 4" in message and "out/checkpoints/latest.pt" in message
    assert "--resume" in message
    assert signal.getsignal(signum) is before  # the handler is put back


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="no SIGUSR2 on this platform")
def test_sigusr2_is_left_to_a_handler_already_installed():
    """In a submitit job, SIGUSR2 belongs to submitit (checkpoint and requeue): the fit loop does not take it."""
    seen = []

    def handler(signum, frame):
        seen.append(signum)

    old = signal.signal(signal.SIGUSR2, handler)
    run = RecordingRun(during=lambda run: run.iteration == 2 and os.kill(os.getpid(), signal.SIGUSR2))
    try:
        fitloop.fit(run)
        assert signal.getsignal(signal.SIGUSR2) is handler
    finally:
        signal.signal(signal.SIGUSR2, old)
    assert seen == [signal.SIGUSR2] and run.iteration == 10 and run.names(10)[-1] == "checkpoint"
    assert [name for name, _ in run.events].count("checkpoint") == 2  # on the cadence only (5 and 10)


def test_the_handlers_are_put_back_after_a_finished_run():
    before = {s: signal.getsignal(s) for s in STOPS}
    fitloop.fit(RecordingRun())
    assert {s: signal.getsignal(s) for s in STOPS} == before


def test_outside_the_main_thread_no_handler_is_installed_and_the_run_finishes():
    """Signal handlers can be installed only in the main thread (a notebook's or a server's worker threads): the
    loop runs there without them."""
    run, errors = RecordingRun(), []

    def target():
        try:
            fitloop.fit(run)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    before = {s: signal.getsignal(s) for s in STOPS}
    worker = threading.Thread(target=target)
    worker.start()
    worker.join(timeout=60)
    assert errors == [] and run.iteration == 10
    assert {s: signal.getsignal(s) for s in STOPS} == before


class FakeMonotonic:
    def __init__(self):
        self.t = 3.0  # small: (t - t0) differs from t % t0 and t // t0 within the grace

    def __call__(self):
        return self.t


def test_stop_pending_waits_the_grace_for_one_request_and_not_for_a_second(monkeypatch):
    """The critic loop polls `run.stop_pending()`: False without a request and within STOP_GRACE_S (5 s) of one
    (the iteration may finish and be checkpointed), True after the grace or at a second request."""
    clock = FakeMonotonic()
    monkeypatch.setattr(fitloop, "time", SimpleNamespace(monotonic=clock, perf_counter=time.perf_counter))
    seen = []

    def during(run):
        if run.iteration == 1:
            seen.append(run.stop_pending())  # no request
            os.kill(os.getpid(), signal.SIGINT)
            for dt in (0.0, 4.9, 5.1):
                clock.t = 3.0 + dt
                seen.append(run.stop_pending())
            clock.t = 3.0
            os.kill(os.getpid(), signal.SIGINT)
            seen.append(run.stop_pending())  # a second request, at once

    with pytest.raises(TrainingInterrupted):
        fitloop.fit(RecordingRun(during=during))
    assert fitloop.STOP_GRACE_S == 5.0 and seen == [False, False, False, True, True]
    readme = (REPO / "README.md").read_text()
    assert "iteration still running 5 s later" in " ".join(readme.split())  # what users are told


@pytest.mark.parametrize(("args", "iteration"), [((), 4), ((12,), 12)])
def test_an_abandoned_iteration_is_not_checkpointed_and_the_message_says_where_to_resume(args, iteration):
    run = RecordingRun(checkpoint_every=1, abandon_at=4, abandon_args=args)
    with pytest.raises(TrainingInterrupted) as e:
        fitloop.fit(run)
    assert run.iteration == 3 and run.events[-1] == ("checkpoint", 3)  # nothing of iteration 4 (3 | 1 is not 4)
    message = str(e.value)
    assert f"received signal {int(signal.SIGINT)} during iteration {iteration}, which was abandoned" in message
    assert "its 7 critic steps" in message and "out/checkpoints/latest.pt" in message and "--resume" in message


def test_the_poll_is_removed_after_the_loop_unless_the_run_had_its_own():
    class WithClassPoll(RecordingRun):
        @staticmethod
        def stop_pending():
            return "the class's"

    polls = []
    run = WithClassPoll(during=lambda run: polls.append(run.stop_pending()))
    fitloop.fit(run)
    assert polls == [False] * 10 and run.stop_pending() == "the class's"

    own = RecordingRun()
    own.stop_pending = lambda: "its own"
    fitloop.fit(own)
    assert "stop_pending" in vars(own)
    plain = RecordingRun()
    fitloop.fit(plain)
    assert not hasattr(plain, "stop_pending")


def test_without_progress_nothing_is_drawn_and_the_estimate_is_printed(capsys):
    run = RecordingRun(iterations=14)
    del run.device
    fitloop.fit(run)
    out = capsys.readouterr()
    assert out.err == ""
    lines = out.out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("piad: about ")
    assert "for the remaining 3 of 14 iterations on this device" in lines[0]  # after 1 untimed + 10 timed


def test_the_progress_bar_counts_the_whole_run_from_the_resumed_iteration_with_the_runs_label(capsys):
    fitloop.fit(RecordingRun(start=6, progress=True))
    err = capsys.readouterr().err
    assert "digits 1/0" in err and "6/10" in err and "10/10" in err and "lam=2.5" in err
    assert "0/10" not in err.replace("10/10", "")


def test_durations_read_in_seconds_minutes_or_hours():
    assert [fitloop.format_duration(s) for s in (0, 89.4, 90, 5399, 5400, 36000)] == [
        "0 s",
        "89 s",
        "2 min",
        "90 min",
        "1.5 h",
        "10.0 h",
    ]


def test_no_estimate_once_the_last_iteration_is_done():
    # two iterations left at 60 s each: the second one times the first, but nothing remains to estimate
    assert messages(fitloop.DurationEstimate(10, "cpu", clock=Clock(60.0)), [9, 10]) == []
    assert messages(fitloop.DurationEstimate(10, "cpu", clock=Clock(60.0)), [8, 9, 10]) == [
        (9, "piad: about 60 s for the remaining 1 of 10 iterations on cpu (60 s per iteration over 1 iterations)")
    ]


def messages(est: fitloop.DurationEstimate, iterations) -> list[tuple[int, str]]:
    return [(i, m) for i in iterations if (m := est.update(i))]


def test_estimate_after_ten_timed_iterations():
    # 2 s per iteration; the first iteration is not timed, so the estimate comes after iteration 11
    out = messages(fitloop.DurationEstimate(1000, "cpu", clock=Clock(2.0)), range(1, 1001))
    assert [i for i, _ in out] == [11]
    remaining = 1000 - 11
    expected = f"about {round(remaining * 2.0 / 60)} min for the remaining {remaining} of 1000 iterations on cpu"
    assert expected in out[0][1]


@pytest.mark.parametrize("seconds", [12.0, 10.0])  # 3 timed iterations = 36 s, or exactly the 30 s threshold
def test_estimate_after_thirty_seconds_when_iterations_are_slow(seconds):
    out = messages(fitloop.DurationEstimate(2000, "cuda", clock=Clock(seconds)), range(101, 2001))
    assert [i for i, _ in out] == [104]
    assert f"about {1896 * seconds / 3600:.1f} h for the remaining 1896 of 2000 iterations on cuda" in out[0][1]


def test_no_estimate_for_a_run_about_to_finish():
    assert messages(fitloop.DurationEstimate(10, "cpu", clock=Clock(60.0)), [10]) == []


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


def test_without_a_bar_messages_are_flushed_at_once(monkeypatch):
    """In a Slurm log or a pipe, stdout is block-buffered: the estimate must not wait for the end of training."""
    import sys

    class Recorder:
        def __init__(self):
            self.events = []

        def write(self, text):
            self.events.append(("write", text))

        def flush(self):
            self.events.append(("flush", None))

    out = Recorder()
    monkeypatch.setattr(sys, "stdout", out)
    fitloop._NoBar.write("piad: about 2 min")
    assert "".join(t for kind, t in out.events if kind == "write") == "piad: about 2 min\n"
    assert out.events[-1] == ("flush", None)
