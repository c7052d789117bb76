"""The fit loop shared by Trainer and EnsembleTrainer (book: Method > Training, spec-iteration, repeated to
`iterations`).

Every iteration runs `train_iteration()`; the bookkeeping is on the config's cadence (and after the last
iteration): check for divergence and write the log every `log_every`, sample grids every `sample_every`,
checkpoints every `checkpoint_every`. SIGINT/SIGTERM (in the main thread) stops the loop cleanly after the current
iteration: a checkpoint is written first, then :class:`~piad.errors.TrainingInterrupted` is raised. An iteration
still running STOP_GRACE_S after the request (a long critic loop), or a second request, is abandoned instead (the
critic loop polls `run.stop_pending()`): nothing is saved of it, and the last checkpoint is where a resume starts.
SIGUSR2 (Slurm's warning before a time limit or preemption, which would otherwise kill the process) stops the loop
too, unless the process already handles it (a submitit job does, and requeues itself).

A run object provides: `cfg`, `iteration`, `elapsed`, `progress`, `train_iteration()`, `check()` (raise or mark
divergence; may synchronise the device), `log()`, `save_samples()`, `checkpoint()`, `progress_label()`,
`progress_postfix()` and `checkpoint_hint()` (where the interrupted run's checkpoint is, for the message).
"""

from __future__ import annotations

import importlib.util
import signal
import threading
import time

from piad.errors import TrainingInterrupted

STOP_GRACE_S = 5.0  # a stop request lets the current iteration finish (and checkpoints it) unless that takes longer
ESTIMATE_AFTER_ITERATIONS = 10  # the duration estimate: after this many timed iterations...
ESTIMATE_AFTER_SECONDS = 30.0  # ...or this many seconds, whichever comes first


class IterationAbandoned(Exception):
    """Raised from inside an iteration (the critic loop) when a stop request cannot wait for its end."""


class DurationEstimate:
    """'about N min for the remaining M iterations on <device>', once, from the first timed iterations.

    The first iteration of a (resumed) run is not timed: it includes one-off costs (feature cache, kernel selection).
    """

    def __init__(self, total: int, device, clock=time.perf_counter):
        self.total, self.device, self.clock = total, device, clock
        self.t1: float | None = None
        self.done = False

    def update(self, iteration: int) -> str | None:
        """Call after each iteration; returns the message once, when enough iterations have been timed."""
        if self.done:
            return None
        now = self.clock()
        if self.t1 is None:
            self.t1, self.i1 = now, iteration
            return None
        n, dt = iteration - self.i1, now - self.t1
        if n < ESTIMATE_AFTER_ITERATIONS and dt < ESTIMATE_AFTER_SECONDS:
            return None
        self.done = True
        remaining = self.total - iteration
        if remaining <= 0:  # nothing left to estimate
            return None
        return (
            f"piad: about {format_duration(remaining * dt / n)} for the remaining {remaining} of "
            f"{self.total} iterations on {self.device} ({dt / n:.3g} s per iteration over {n} iterations)"
        )


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _NoBar:
    def update(self, *a, **k) -> None:
        pass

    def set_postfix(self, *a, **k) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def write(message: str) -> None:
        print(message, flush=True)


def _progress_bar(run):
    """No bar without `run.progress`; a notebook widget only where ipywidgets is installed (else tqdm.auto warns
    "IProgress not found" on stderr), the text bar otherwise."""
    if not run.progress:
        return _NoBar()
    if importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(total=run.cfg.iterations, initial=run.iteration, desc=run.progress_label(), dynamic_ncols=True)


def fit(run) -> None:
    cfg = run.cfg
    stop: list[int] = []
    stopped_at: list[float] = []
    handlers = {}

    def request_stop(signum, frame) -> None:
        stop.append(signum)
        stopped_at.append(time.monotonic())

    def stop_pending() -> bool:
        """A second request, or one older than STOP_GRACE_S: abandon the iteration instead of finishing it."""
        return bool(stop) and (len(stop) > 1 or time.monotonic() - stopped_at[0] > STOP_GRACE_S)

    if threading.current_thread() is threading.main_thread():
        stops = [signal.SIGINT, signal.SIGTERM]
        usr2 = getattr(signal, "SIGUSR2", None)  # Slurm's warning before a time limit or preemption
        if usr2 is not None and signal.getsignal(usr2) == signal.SIG_DFL:  # (unless a handler is installed)
            stops.append(usr2)
        for s in stops:
            handlers[s] = signal.signal(s, request_stop)
    had_poll = "stop_pending" in vars(run)
    run.stop_pending = stop_pending  # polled inside long iterations (piad.run.steps: the critic loop)
    try:
        bar = _progress_bar(run)
        eta = DurationEstimate(cfg.iterations, getattr(run, "device", "this device"))
        t0 = time.perf_counter() - run.elapsed
        while run.iteration < cfg.iterations:
            try:
                run.train_iteration()
            except IterationAbandoned as e:
                raise TrainingInterrupted(
                    f"received signal {stop[0]} during iteration {e.args[0] if e.args else run.iteration + 1}, "
                    f"which was abandoned (its {cfg.n_dis} critic steps would take long); continue from the last "
                    f"checkpoint written before it ({run.checkpoint_hint()}, if any) with `piad train ... --resume` "
                    "(or resume=True)."
                ) from None
            it, last = run.iteration, run.iteration == cfg.iterations
            run.elapsed = time.perf_counter() - t0
            bar.update(1)
            message = eta.update(it)
            if message:
                bar.write(message)
            if it % cfg.log_every == 0 or last:
                run.check()
                run.log()
                if run.progress:
                    bar.set_postfix(run.progress_postfix())
            if it % cfg.sample_every == 0 or last:
                run.save_samples()
            if it % cfg.checkpoint_every == 0 or last or stop:
                run.check()
                run.checkpoint()
            if stop:
                raise TrainingInterrupted(
                    f"received signal {stop[0]} at iteration {it}; checkpoint saved to {run.checkpoint_hint()}. "
                    "Continue with `piad train ... --resume` (or resume=True)."
                )
        bar.close()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        if not had_poll:
            try:
                del run.stop_pending
            except AttributeError:
                pass
