"""A one-node Slurm cluster on localhost for the tests, from Debian's packages (slurmctld, slurmd, slurm-client, munge).

Nothing is installed here (`.ci/run` installs the packages with apt): `start()` finds the daemons, writes a
configuration into a temporary folder, starts munged (unless a munge daemon already answers), slurmctld and slurmd in
the foreground as children of this process, and waits until the node is idle; `stop()` ends them by PID (the kernel
signals them if the test process dies first). When something is missing, `start()` raises `Unavailable` with the
reason (the tests skip with it).

The configuration is the smallest that runs jobs without systemd, cgroups or a database: process tracking through
/proc, no task plugin, cores (not memory) as the consumable, and no accounting (`sacct` has nothing to say: piad reads
job states from `squeue` then, see piad.experiments.cluster.slurm_states). A requeued job may start again only after
its credential expires: `cred_expire=5` and a scheduler that runs every 1-2 s bring a requeue back to running in
about 7 s instead of 2 minutes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo", "srun")
SBIN = ("/usr/sbin", "/sbin")
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
START_TIMEOUT_S = 60.0


class Unavailable(RuntimeError):
    """Why no cluster can be started here (a skip reason)."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def installed() -> bool:
    """Whether Slurm's and munge's programs are all here."""
    return all(_which(d) for d in DAEMONS)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prctl():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()


def _die_with_parent() -> None:
    """In a daemon's process before exec (Linux): SIGTERM when the test process ends, however it ends."""
    if _PRCTL is not None:
        _PRCTL(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _munge_answers() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return enc.returncode == 0 and dec.returncode == 0


class SlurmCluster:
    """One slurmctld and one slurmd (and munged if needed) on this machine; `env` holds SLURM_CONF for clients."""

    def __init__(self):
        self.folder: Path | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.env: dict[str, str] = {}
        self.node = socket.gethostname().split(".")[0]
        self.partition = "debug"

    # -- start ---------------------------------------------------------------------------------------------------
    def start(self) -> SlurmCluster:
        missing = [d for d in DAEMONS if not _which(d)]
        if missing:
            raise Unavailable(
                f"Slurm is not installed here (no {', '.join(missing)}); "
                "apt-get install slurmctld slurmd slurm-client munge (as .ci/run does) runs these tests"
            )
        if os.name != "posix" or os.geteuid() != 0:
            raise Unavailable("a Slurm test cluster needs root here (slurmd starts each job as its user)")
        self.folder = Path(tempfile.mkdtemp(prefix="piad-slurm-"))
        try:
            self._start_munge()
            self._write_config()
            self._start("slurmctld", [_which("slurmctld"), "-D", "-i"])
            self._wait_for(lambda: self._run("scontrol", "ping").returncode == 0, "slurmctld to answer")
            self._start("slurmd", [_which("slurmd"), "-D"])
            self._wait_for(self._node_idle, f"node {self.node} to be idle")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        if MUNGE_SOCKET.exists() and _munge_answers():
            return  # a munge daemon of this machine: use it, leave it running
        import pwd

        try:
            munge_user = pwd.getpwnam("munge")
        except KeyError:
            raise Unavailable("no 'munge' user: the munge package is not installed properly") from None
        MUNGE_SOCKET.parent.mkdir(mode=0o755, exist_ok=True)
        os.chown(MUNGE_SOCKET.parent, munge_user.pw_uid, munge_user.pw_gid)
        self._start("munged", [_which("munged"), "--foreground"], user="munge")
        self._wait_for(_munge_answers, "munged to answer")

    def _write_config(self) -> None:
        d = self.folder
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        cpus = os.cpu_count() or 1
        conf = f"""\
ClusterName=piadtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=1
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
KillWait=5
InactiveLimit=0
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        (d / "slurm.conf").write_text(conf)
        self.env = {"SLURM_CONF": str(d / "slurm.conf")}

    def _start(self, name: str, cmd: list[str], user: str | None = None) -> None:
        log = open(self.folder / f"{name}.out", "wb")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            cmd,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def _run(self, *cmd: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [_which(cmd[0]), *cmd[1:]],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def _node_idle(self) -> bool:
        out = self._run("sinfo", "-h", "-N", "-o", "%t").stdout.split()
        return out == ["idle"]

    def _wait_for(self, cond, what: str) -> None:
        t0 = time.time()
        while time.time() - t0 < START_TIMEOUT_S:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise Unavailable(f"{name} exited with {p.returncode} at start-up: {self.tail(name)}")
            try:
                if cond():
                    return
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.2)
        raise Unavailable(f"timed out after {START_TIMEOUT_S:.0f} s waiting for {what}: {self.tail('slurmctld')}")

    def tail(self, name: str, n: int = 3) -> str:
        paths = [self.folder / f"{name}.log", self.folder / f"{name}.out"] if self.folder else []
        lines = []
        for p in paths:
            if p.exists():
                lines += [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:]) or "(no output)"

    # -- use -----------------------------------------------------------------------------------------------------
    def run(self, *cmd: str) -> str:
        """A Slurm client command against this cluster; its stdout (AssertionError with stderr if it fails)."""
        r = self._run(*cmd)
        assert r.returncode == 0, f"{' '.join(cmd)}: {r.stderr.strip()}"
        return r.stdout

    def queue(self) -> list[tuple[str, str]]:
        """(job id, state) of every job Slurm still knows, array tasks one by one."""
        out = self.run("squeue", "-h", "-r", "-t", "all", "-o", "%i %T")
        return [tuple(ln.split()) for ln in out.splitlines() if ln.strip()]

    # -- stop ------------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel what is left, end the daemons this object started (by PID), delete the folder."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            try:
                self._run("scancel", "--user=root", timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=15)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
