"""The run directory: its layout, and the only code that creates, clears, checks, appends to or locks one.

    RUN/config.json            the resolved config (CONFIG)
    RUN/checkpoints/latest.pt  full resumable state (latest_checkpoint)
    RUN/checkpoints/iter_XXXXXXX.pt  weight snapshots (snapshot_path, snapshots)
    RUN/log.csv                losses, lambda_E, lambda_G (LOG, LOG_COLUMNS)
    RUN/policy.csv             per-layer gradient stds of the weight rule (POLICY)
    RUN/samples/*.png          sample grids, rows G(z), x, G(E(x)) (SAMPLES)
    RUN/metrics.json           evaluation results, or the divergence record (METRICS)
    RUN/scores.csv, scores.npz test scores (SCORES, SCORES_NPZ);  RUN/curve.csv  learning curve (CURVE)
    RUN/curve.points.csv       every snapshot's ROC AUC as scored (the final one by the evaluation), with the
                               snapshot file's stamp (CURVE_POINTS)
    RUN/.lock                  the writer's lock (LOCK, RunLock)
    RUN/.overwrite-new/        while `--overwrite` trains a new run beside a finished one (STAGING); its files
                               replace the old run's only once it has finished (commit_overwrite)

Every file is written atomically (temp file, fsync, rename); OSErrors become one-line errors.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from piad.errors import PiadError, RunDirectoryError, TrainingDiverged, TrainingInterrupted, os_error
from piad.run.config import ExperimentConfig, load_config

CONFIG, METRICS, SCORES, LOG, POLICY, CURVE, LOCK = (
    "config.json",
    "metrics.json",
    "scores.csv",
    "log.csv",
    "policy.csv",
    "curve.csv",
    ".lock",
)
CHECKPOINTS, SAMPLES, LATEST = "checkpoints", "samples", "latest.pt"
CURVE_POINTS = "curve.points.csv"
SCORES_NPZ = "scores.npz"  # per-image labels and float32 scores (piad.run.scorefile)
LOG_COLUMNS = [
    "iteration",
    "seconds",
    "critic_x",
    "critic_z",
    "wasserstein_x",
    "wasserstein_z",
    "gp_x",
    "gp_z",
    "adv_e",
    "adv_g",
    "rec",
    "lambda_e",
    "lambda_g",
]
SNAPSHOT_NAME = re.compile(r"iter_(\d+)\.pt$")
# every entry a run writes (what --overwrite replaces and clear_run removes); other files in the folder are kept
RUN_ENTRIES = (CHECKPOINTS, SAMPLES, METRICS, SCORES, SCORES_NPZ, LOG, POLICY, CURVE, CURVE_POINTS, CONFIG)
STAGING, REPLACED, COMPLETE = ".overwrite-new", ".overwrite-old", ".complete"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux shows it (other threads may create files)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def io_errors(path, action: str = "write"):
    """Turn an OSError inside the block into a one-line PiadError naming `path` (piad.errors.os_error)."""
    try:
        yield
    except OSError as e:
        raise os_error(e, path, action) from None


def remove_stale_temp_files(folder) -> None:
    """Delete temp files of atomic writes (`.NAME.*.tmp`) that a killed process left in `folder`; call it only
    while holding the run's RunLock (no other writer)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write `data` to `path` so that a crash at any moment leaves either the old file or the new one.

    The new file gets the mode a plain `open(path, "w")` would give (0o666 less the umask). OSErrors (disk full,
    permission denied, a folder in the way) become a one-line PiadError naming `path`."""
    path = Path(path)
    tmp = None
    with io_errors(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):  # a part of the folder path is a file
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", str(path)) from None
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), 0o666 & ~current_umask())
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            try:  # make the rename durable
                dfd = os.open(path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                pass
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8", "surrogateescape"))  # file names that are not UTF-8 keep their bytes


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class RunLock:
    """An exclusive lock on a run directory: `fcntl.flock` on `<run>/.lock`, which holds the owner's PID.

    The kernel drops the lock when its owner dies, so a lock file left by a killed process is free again. A run
    directory that `acquire` created is removed by `release` if it is still empty, and so are the parent folders it
    created (a refused run leaves none).
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / LOCK
        self.held = False
        self.fd: int | None = None
        self.created: list[Path] = []  # folders acquire() made, innermost first

    def acquire(self) -> RunLock:
        folder = self.path.parent
        with io_errors(folder, "create the run directory"):
            if folder.exists() and not folder.is_dir():
                raise FileExistsError(errno.EEXIST, "File exists", str(folder))
            missing = [d for d in (folder, *folder.parents) if not os.path.lexists(d)]
            self.created = missing  # removed again by release() while empty
            folder.mkdir(parents=True, exist_ok=True)
        try:
            while True:
                with io_errors(self.path, "create the lock file"):
                    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    try:
                        pid = self.path.read_text().strip() or "?"
                    except OSError:
                        pid = "?"
                    raise RunDirectoryError(
                        f"run directory {str(folder)!r} is in use by process {pid} (lock file {self.path}). "
                        "Wait for it to finish, or use another --out directory."
                    ) from None
                try:  # the previous owner may have removed the file between our open and flock: lock the new one
                    same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            self.fd, self.held = fd, True
            with io_errors(self.path, "write the lock file"):
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)  # before unlocking: a process waiting on this file then retries
            os.close(self.fd)
            self.fd, self.held = None, False
        for d in self.created:  # the run directory, then the parents it needed (a refused run leaves none)
            try:
                d.rmdir()  # succeeds only if nothing was written into it
            except OSError:
                break
        self.created = []

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def lock_holder(run_dir) -> int | None:
    """Who holds the RunLock of `run_dir`, asked of the lock itself (flock), not of the PID written in the file (a
    dead writer's PID may have been reused by another process): None if nobody holds it, else the PID in the lock
    file (0 if unreadable). The probe takes a shared lock for an instant and never creates the file."""
    path = Path(run_dir) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                text = os.read(fd, 64).decode("ascii", "replace").strip()
            except OSError:
                text = ""
            return int(text) if text.isdigit() else 0
        except OSError:
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists on this machine (signal 0 probes without sending anything)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:  # 0 and negatives name process groups
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


# -- paths ----------------------------------------------------------------------------------------------------------
def latest_checkpoint(run) -> Path:
    return Path(run) / CHECKPOINTS / LATEST


def snapshot_path(run, iteration: int) -> Path:
    return Path(run) / CHECKPOINTS / f"iter_{int(iteration):07d}.pt"


def snapshots(run, every: int | None = None) -> list[tuple[int, Path]]:
    """(iteration, path) of the run's weight snapshots, by iteration; with `every`, only multiples of it."""
    found = []
    for p in (Path(run) / CHECKPOINTS).glob("iter_*.pt"):
        m = SNAPSHOT_NAME.search(p.name)
        if m and (every is None or int(m.group(1)) % every == 0):
            found.append((int(m.group(1)), p))
    return sorted(found)


def snapshot_stamp(path) -> str:
    """Size and modification time of a snapshot file: a kept curve point is valid while the file has this stamp."""
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def curve_points(run) -> dict[int, tuple[float, str]]:
    """The kept learning-curve points of a run (CURVE_POINTS): iteration -> (ROC AUC, snapshot stamp); none when the
    file is absent or unreadable (the points are then scored again)."""
    try:
        with open(Path(run) / CURVE_POINTS, newline="") as f:
            return {int(r["iteration"]): (float(r["roc_auc"]), r["snapshot"]) for r in csv.DictReader(f)}
    except (OSError, KeyError, TypeError, ValueError, csv.Error):
        return {}


def keep_curve_points(run, points: dict[int, tuple[float, str]]) -> None:
    """Add (or replace) kept points, iteration -> (ROC AUC of that snapshot on the run's own test split, its
    stamp), to CURVE_POINTS."""
    kept = {**curve_points(run), **points}
    lines = ["iteration,roc_auc,snapshot"] + [f"{i},{kept[i][0]!r},{kept[i][1]}" for i in sorted(kept)]
    atomic_write_text(Path(run) / CURVE_POINTS, "\n".join(lines) + "\n")


def run_of_checkpoint(path) -> Path | None:
    """The run directory holding checkpoint `path` (`RUN/checkpoints/*.pt` next to `RUN/config.json`), else None."""
    path = Path(path)
    run = path.parent.parent
    return run if path.parent.name == CHECKPOINTS and (run / CONFIG).is_file() else None


# -- reading and checking -----------------------------------------------------------------------------------------
def load_run_config(run) -> ExperimentConfig:
    path = Path(run) / CONFIG
    if not path.exists():
        raise RunDirectoryError(f"{str(run)!r} has no config.json: is it a piad run directory (piad train --out DIR)?")
    return load_config(path)


def read_metrics(run) -> dict | None:
    """metrics.json as a dict, or None if it is missing or unreadable."""
    try:
        m = json.loads((Path(run) / METRICS).read_text())
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def diverged_status(run) -> dict | None:
    """The metrics.json of a run whose training diverged, else None."""
    m = read_metrics(run)
    return m if m is not None and m.get("status") == "diverged" else None


def has_results(run) -> bool:
    """True if the run directory holds evaluated results (a diverged run's metrics do not count)."""
    m = read_metrics(run)
    return m is not None and m.get("status") != "diverged"


def check_run_directory(out: Path, resume: bool, overwrite: bool) -> None:
    """RunDirectoryError if `out` holds finished results or a checkpoint and neither resume nor overwrite is set, for
    resuming finished results that have no checkpoint (there is nothing to resume; training anew would replace
    them), and for resuming a run whose training diverged (resuming repeats the divergence)."""
    if overwrite:
        return
    bad = diverged_status(out)
    if bad is not None and (resume or latest_checkpoint(out).exists()):  # (a record alone: it may train again)
        from piad.errors import divergence_advice

        raise RunDirectoryError(
            f"run directory {str(out)!r} holds a run whose training diverged at iteration {bad.get('iteration')} "
            f"({bad.get('what')}); resuming it would repeat the divergence. Train it again with --overwrite and "
            f"{divergence_advice()}, or choose another --out."
        )
    if has_results(out) and resume and not latest_checkpoint(out).exists():
        raise RunDirectoryError(
            f"run directory {str(out)!r} holds finished results (metrics.json) and no checkpoint to resume from; "
            "they are kept. Pass overwrite=True / --overwrite to train the run again, or choose another --out."
        )
    if has_results(out) and not resume:
        raise RunDirectoryError(
            f"run directory {str(out)!r} already holds finished results (metrics.json). "
            "Pass overwrite=True / --overwrite to replace them, or choose another --out."
        )
    if latest_checkpoint(out).exists() and not resume:
        raise RunDirectoryError(
            f"run directory {str(out)!r} already holds a checkpoint. Pass resume=True / "
            "--resume to continue it, overwrite=True / --overwrite to start again, or "
            "choose another --out."
        )


# -- writing ----------------------------------------------------------------------------------------------------------
def clear_run(out: Path) -> None:
    """Remove everything a run wrote (checkpoints, samples, logs, results, config)."""
    with io_errors(out, "clear the run directory"):
        for name in RUN_ENTRIES:
            path = Path(out) / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def holds_run(out) -> bool:
    """True if `out` holds anything a run wrote (what --overwrite must not lose before the new run has finished)."""
    return any(os.path.lexists(Path(out) / name) for name in RUN_ENTRIES)


def _move_entries(src: Path, dst: Path) -> None:
    for name in RUN_ENTRIES:
        if os.path.lexists(src / name):
            os.replace(src / name, dst / name)


def recover_overwrite(out) -> None:
    """Under the run's RunLock: finish or undo an overwrite that a killed process left (STAGING, REPLACED).

    A new run that had finished (its COMPLETE mark) replaces the old one; an unfinished one is removed and the old
    run's entries are put back."""
    out = Path(out)
    staging, replaced = out / STAGING, out / REPLACED
    with io_errors(out, "recover an interrupted --overwrite in"):
        if replaced.is_dir():
            if (staging / COMPLETE).is_file():  # killed while swapping: finish it
                _move_entries(out, replaced)
                _move_entries(staging, out)
            else:  # killed before the swap: the old run stays
                for name in RUN_ENTRIES:
                    if os.path.lexists(replaced / name) and not os.path.lexists(out / name):
                        os.replace(replaced / name, out / name)
            shutil.rmtree(replaced)
        if os.path.lexists(staging):
            shutil.rmtree(staging)


def begin_overwrite(out) -> Path:
    """Under the run's RunLock: an empty folder inside `out` (STAGING) where the new run of `--overwrite` is trained,
    so that the finished run in `out` stays untouched until :func:`commit_overwrite`."""
    recover_overwrite(out)
    staging = Path(out) / STAGING
    with io_errors(staging, "create the folder of the new run"):
        staging.mkdir()
    return staging


def commit_overwrite(out) -> None:
    """The new run in STAGING has finished: it replaces the old run's entries (renames in one folder: a kill at
    any moment leaves either run, completed by the next train's :func:`recover_overwrite`)."""
    out = Path(out)
    staging, replaced = out / STAGING, out / REPLACED
    atomic_write_bytes(staging / COMPLETE, b"")
    with io_errors(out, "replace the run in"):
        replaced.mkdir(exist_ok=True)
        _move_entries(out, replaced)
        _move_entries(staging, out)
        shutil.rmtree(replaced)
        shutil.rmtree(staging)


def discard_overwrite(out) -> None:
    """The new run of an `--overwrite` failed or was interrupted: remove it; the old run is untouched."""
    shutil.rmtree(Path(out) / STAGING, ignore_errors=True)


@contextmanager
def overwrite_beside(out, overwrite: bool):
    """Yield the folder a (new) run is trained in: `out` itself, or with `overwrite` and a run already in `out`, a
    folder beside it (begin_overwrite) whose files replace the old run's when the block ends normally. If the block
    raises, the new run is removed and `out` is left exactly as it was; the error then says so."""
    out = Path(out)
    recover_overwrite(out)
    if not (overwrite and holds_run(out)):
        yield out
        return
    staging = begin_overwrite(out)
    try:
        yield staging
    except BaseException as e:
        discard_overwrite(out)
        if getattr(e, "overwrite_noted", False):  # (an ensemble: another member's folder said it already)
            raise
        kept = f"the new run was discarded and {str(out)!r} keeps its previous run unchanged"
        if isinstance(e, TrainingInterrupted):
            new = TrainingInterrupted(
                f"interrupted ({e.args[0].split(';')[0] if e.args else 'stop requested'}); {kept}. Run the "
                "command again to replace it."
            )
            new.overwrite_noted = True
            raise new from None
        if isinstance(e, TrainingDiverged):
            e.args = (f"{e.headline()}. {kept[0].upper()}{kept[1:]}; train again with {e.advice()}.",)
        elif isinstance(e, PiadError):
            e.args = (f"{str(e).rstrip('.')}; {kept}.",)
        e.overwrite_noted = True
        raise
    if staging.is_dir():  # (a caller may have discarded a new run that failed without raising)
        commit_overwrite(out)


def prepare_run(out: Path, config_json: str, overwrite: bool, resumed_iteration: int | None, iterations: int) -> None:
    """Lay out `out` for training (call while holding its RunLock): cleared first with `overwrite`, stale temp
    files removed, config.json written. Resumed at `resumed_iteration`: log rows after it are dropped, and the
    results of a shorter run too; a new run starts with empty logs."""
    out = Path(out)
    if overwrite:
        clear_run(out)
    for folder in (out, out / CHECKPOINTS, out / SAMPLES):
        remove_stale_temp_files(folder)
    atomic_write_text(out / CONFIG, config_json + "\n")
    if resumed_iteration is None:
        for name in (LOG, POLICY):
            (out / name).unlink(missing_ok=True)
        return
    truncate_logs(out, resumed_iteration)
    if resumed_iteration < iterations:
        (out / METRICS).unlink(missing_ok=True)  # results of a shorter run are superseded


def write_diverged(out: Path, error: str, iteration: int, what: str) -> None:
    """metrics.json of a run whose training diverged."""
    atomic_write_json(
        Path(out) / METRICS,
        {"status": "diverged", "error": error, "iteration": iteration, "what": what, "roc_auc": None},
    )


def append_log_row(out: Path, row: dict) -> None:
    """One row of `out/log.csv` (LOG_COLUMNS; the header when the file is new)."""
    path = Path(out) / LOG
    new = not path.exists()
    with io_errors(path), open(path, "a", newline="") as f:
        w = csv.DictWriter(f, LOG_COLUMNS)
        if new:
            w.writeheader()
        w.writerow({k: row.get(k, "") for k in LOG_COLUMNS})


def append_policy_rows(out: Path, iteration: int, policy_e, policy_g) -> None:
    """The weight rule's latest per-layer gradient stds and lambdas of E and G, appended to `out/policy.csv`."""
    path = Path(out) / POLICY
    new = not path.exists()
    with io_errors(path), open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["iteration", "network", "layer", "adv_std", "rec_std", "lambda"])
        for name, pol in (("E", policy_e), ("G", policy_g)):
            a, r = pol.adv[-1].tolist(), pol.rec[-1].tolist()
            lam = float(pol.weight)
            for layer, (ai, ri) in enumerate(zip(a, r, strict=True)):
                w.writerow([iteration, name, layer, f"{ai:.6g}", f"{ri:.6g}", f"{lam:.6g}"])


def truncate_logs(out: Path, iteration: int) -> None:
    """After a resume, drop log rows written after the checkpoint's iteration (they will be written again)."""
    for name in (LOG, POLICY):
        path = Path(out) / name
        if path.exists():
            lines = path.read_text().splitlines()
            kept = [lines[0]] + [ln for ln in lines[1:] if ln and int(ln.split(",")[0]) <= iteration]
            atomic_write_text(path, "\n".join(kept) + "\n")


def save_sample_grid(out: Path, iteration: int, grid: torch.Tensor) -> None:
    """`out/samples/iter_XXXXXXX.png` and `latest.png` (rows: G(z), x, G(E(x))), written atomically."""
    from torchvision.utils import save_image

    buf = io.BytesIO()
    save_image(grid.cpu(), buf, format="png", nrow=8, padding=1)
    for name in (f"iter_{iteration:07d}.png", "latest.png"):
        atomic_write_bytes(Path(out) / SAMPLES / name, buf.getvalue())
