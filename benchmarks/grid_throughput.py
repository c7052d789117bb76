"""Grid throughput on a multi-core CPU: N runs side by side at 1 thread each, or one run at N threads?

    python benchmarks/grid_throughput.py --benchmark cifar10 --vgg substitute --cores 2 --repeats 2

The offline grid is run as independent jobs (`piad reproduce`, one thread per job, one job per core). Whether that
uses the cores better than one job with all of them depends on the machine: side-by-side jobs share the caches and
memory bandwidth, one multi-threaded job pays for synchronisation inside every operator. This script measures both
arrangements with `train_speed.py` (variant `proposed` or `optimised`: piad's Trainer, as the offline profile trains)
and reports model-iterations per second over the whole machine:

  side-by-side  N concurrent train_speed.py processes with --threads 1; throughput = sum of 1 / (s per iteration)
  one-job       one train_speed.py process with --threads N;            throughput = 1 / (s per iteration)

The arrangements alternate (side-by-side, one-job, side-by-side, ...) `--repeats` times so that a change of load on
a shared host hits both. Nothing else should be running: the point is how the cores are shared.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import _common as C  # noqa: I001  (puts the repository on sys.path)
import torch

HERE = Path(__file__).resolve().parent
SUMMARY = re.compile(r"SUMMARY train_speed .* s_per_it=([0-9.eE+-]+) ")


def _command(a, threads: int) -> list[str]:
    return [
        sys.executable,
        str(HERE / "train_speed.py"),
        "--benchmark",
        a.benchmark,
        "--vgg",
        a.vgg,
        "--variants",
        a.variant,
        "--threads",
        str(threads),
        "--rounds",
        str(a.rounds),
        "--warmup",
        str(a.warmup),
    ]


def _s_per_it(output: str) -> float:
    m = SUMMARY.search(output)
    if m is None:
        raise RuntimeError("train_speed.py printed no SUMMARY line:\n" + output[-2000:])
    return float(m.group(1))


def side_by_side(a) -> list[float]:
    procs = [
        subprocess.Popen(_command(a, 1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(a.cores)
    ]
    outputs = [p.communicate()[0] for p in procs]  # wait for every job before reading any
    return [_s_per_it(o) for o in outputs]


def one_job(a) -> float:
    out = subprocess.run(_command(a, a.cores), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return _s_per_it(out.stdout)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", default="cifar10")
    p.add_argument(
        "--vgg",
        default="substitute",
        choices=("paper", "substitute"),
        help="substitute: the offline VGG-19 to relu3_1 (as the offline grid); paper: relu4_2",
    )
    p.add_argument(
        "--variant",
        default="proposed",
        choices=("optimised", "proposed"),
        help="proposed = the Trainer in channels_last, as the offline profile trains CIFAR-10",
    )
    p.add_argument("--cores", type=int, default=2, help="N: jobs side by side, or threads of the one job")
    p.add_argument("--repeats", type=int, default=2, help="how often each arrangement is measured (alternating)")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds per train_speed.py process")
    p.add_argument("--warmup", type=int, default=1)
    a = p.parse_args(argv)
    if a.cores < 2:
        p.error(f"--cores {a.cores}: expected at least 2 (with one core there is nothing to arrange)")
    if a.repeats < 1:
        p.error(f"--repeats {a.repeats}: expected at least 1 measurement of each arrangement")

    C.print_environment(torch.device("cpu"), " ".join(["python", *sys.argv]))
    print(f"command of one job: {' '.join(_command(a, 1))}")
    sbs, one = [], []
    for r in range(a.repeats):
        s = side_by_side(a)
        sbs.append(sum(1 / x for x in s))
        print(
            f"repeat {r + 1}: side-by-side s/it per job {', '.join(f'{x:.4f}' for x in s)} -> {sbs[-1]:.4f} model-it/s",
            flush=True,
        )
        t = one_job(a)
        one.append(1 / t)
        print(f"repeat {r + 1}: one job at {a.cores} threads {t:.4f} s/it -> {one[-1]:.4f} model-it/s", flush=True)
    ms, mo = C.median(sbs), C.median(one)
    print(
        f"SUMMARY grid_throughput benchmark={a.benchmark} variant={a.variant} cores={a.cores} "
        f"side_by_side={ms:.4f} one_job={mo:.4f} model-it/s; one_job/side_by_side={mo / ms:.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
