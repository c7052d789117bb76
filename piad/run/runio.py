"""Safe file writing for runs: atomic writes (temp file, fsync, rename), OSError -> one-line errors, a run lock."""
from __future__ import annotations

import errno
import fcntl
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from piad.errors import RunDirectoryError, os_error


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
        path.parent.mkdir(parents=True, exist_ok=True)
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
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path, obj) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class RunLock:
    """An exclusive lock on a run directory: `fcntl.flock` on `<run>/.lock`, which holds the owner's PID.

    The kernel drops the lock when its owner dies, so a lock file left by a killed process is free again. A run
    directory that `acquire` created is removed by `release` if it is still empty (a refused run leaves none).
    """

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self.held = False
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> "RunLock":
        folder = self.path.parent
        with io_errors(folder, "create the run directory"):
            if folder.exists() and not folder.is_dir():
                raise FileExistsError(errno.EEXIST, "File exists", str(folder))
            self.created_dir = not folder.exists()
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
                        "Wait for it to finish, or use another --out directory.") from None
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
            self.path.unlink(missing_ok=True)   # before unlocking: a process waiting on this file then retries
            os.close(self.fd)
            self.fd, self.held = None, False
        if self.created_dir:
            try:
                self.path.parent.rmdir()        # succeeds only if nothing was written into it
            except OSError:
                pass
            self.created_dir = False

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def pid_alive(pid: int) -> bool:
    """True if a process with this PID exists on this machine (signal 0 probes without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
