"""The fit loop shared by Trainer and EnsembleTrainer (method.md §5 repeated to `iterations`).

Every iteration runs `train_iteration()`; the bookkeeping is on the config's cadence (and after the last
iteration): check for divergence and write the log every `log_every`, sample grids every `sample_every`,
checkpoints every `checkpoint_every`. SIGINT/SIGTERM (in the main thread) stops the loop cleanly after the current
iteration: a checkpoint is written first, then :class:`~piad.errors.TrainingInterrupted` is raised. So does SIGUSR2
(Slurm's warning before a time limit or preemption, which would otherwise kill the process) unless the process
already handles it (a submitit job does, and requeues itself).

A run object provides: `cfg`, `iteration`, `elapsed`, `progress`, `train_iteration()`, `check()` (raise or mark
divergence; may synchronise the device), `log()`, `save_samples()`, `checkpoint()`, `progress_label()`,
`progress_postfix()` and `checkpoint_hint()` (where the interrupted run's checkpoint is, for the message).
"""
from __future__ import annotations

import signal
import threading
import time

from piad.errors import TrainingInterrupted


def fit(run) -> None:
    cfg = run.cfg
    stop: list[int] = []
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        stops = [signal.SIGINT, signal.SIGTERM]
        usr2 = getattr(signal, "SIGUSR2", None)     # Slurm's warning before a time limit or preemption
        if usr2 is not None and signal.getsignal(usr2) == signal.SIG_DFL:   # (unless a handler is installed)
            stops.append(usr2)
        for s in stops:
            handlers[s] = signal.signal(s, lambda signum, frame: stop.append(signum))
    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.iterations, initial=run.iteration, disable=not run.progress,
                   desc=run.progress_label(), dynamic_ncols=True)
        t0 = time.perf_counter() - run.elapsed
        while run.iteration < cfg.iterations:
            run.train_iteration()
            it, last = run.iteration, run.iteration == cfg.iterations
            run.elapsed = time.perf_counter() - t0
            bar.update(1)
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
                    "Continue with `piad train ... --resume` (or resume=True).")
        bar.close()
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
