"""2x2 average pooling for the CPU grid: today's depthwise convolution vs F.avg_pool2d, per training iteration.

    nice python benchmarks/pool_speed.py [--benchmarks mnist,cifar10,coil100] [--rounds 7] [--threads 1]

For each benchmark, two Trainers with the offline grid's settings (the substitute VGG-19 to relu3_1, one thread,
NHWC where the offline profile trains NHWC: CIFAR-10) differ only in how piad.model.networks.AvgPool2x2 pools
(`impl` = "conv" or "avg_pool2d"). They are timed in ONE process, interleaved round-robin (one training iteration
of each per round, so that load on a shared machine hits both alike); the median over rounds is reported, and
the ratio conv / avg_pool2d (> 1: avg_pool2d is faster), in wall time and in the process's CPU time (with one
thread, the CPU time is the work itself and barely moves when other processes share the cores). Both run the same
seeded iterations; the largest weight difference after them is printed (same math, other float rounding).
Images: synthetic blobs (speed does not depend on the content).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import _common as C  # (puts the repository on sys.path)

IMPLS = ("conv", "avg_pool2d")


def _set_impl(trainer, impl: str) -> None:
    from piad.model.networks import AvgPool2x2

    n = 0
    for m in trainer.nets.modules():
        if isinstance(m, AvgPool2x2):
            m.impl = impl
            n += 1
    if n == 0:
        raise SystemExit("no AvgPool2x2 in the networks: nothing to compare")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmarks", default="mnist,cifar10,coil100")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads (the offline profile's: 1)")
    p.add_argument("--vgg", default="substitute", choices=C.VGG_CHOICES)
    p.add_argument("--batch-size", type=int, default=None, help="default: the benchmark's (32)")
    a = p.parse_args(argv)
    device = C.setup_device("cpu", a.threads)
    C.print_environment(device, " ".join(["python", *sys.argv]))
    from piad.experiments.profiles import OFFLINE_CHANNELS_LAST
    from piad.run.training import Trainer

    for bench in [b.strip() for b in a.benchmarks.split(",") if b.strip()]:
        ov = {"policy_every": 10**9, "iterations": 10**6}  # the weight rule is not part of the timed iterations
        if a.batch_size:
            ov["batch_size"] = a.batch_size
        cfg = C.bench_config(bench, ov, a.vgg)
        data = C.bench_data(cfg, "synthetic")
        cl = bench in OFFLINE_CHANNELS_LAST
        with tempfile.TemporaryDirectory(prefix="piad_pool_") as tmp:
            trainers = {}
            for impl in IMPLS:
                t = Trainer(cfg, f"{tmp}/{impl}", device, data=data, progress=False, channels_last=cl)
                _set_impl(t, impl)
                trainers[impl] = t
            times = {impl: [] for impl in IMPLS}
            cpu = {impl: [] for impl in IMPLS}
            for r in range(a.warmup + a.rounds):
                line = []
                for impl, t in trainers.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    t.train_iteration()
                    dt, dc = time.perf_counter() - t0, time.process_time() - c0
                    line.append(f"{impl} {dt:.3f}s (cpu {dc:.3f}s)")
                    if r >= a.warmup:
                        times[impl].append(dt)
                        cpu[impl].append(dc)
                warm = " (warm-up)" if r < a.warmup else ""
                print(f"{bench} round {r + 1}/{a.warmup + a.rounds}{warm}: " + "  ".join(line), flush=True)
            diff = max(
                (pa - pb).abs().max().item()
                for pa, pb in zip(
                    trainers["conv"].nets.parameters(), trainers["avg_pool2d"].nets.parameters(), strict=True
                )
            )
        med = {impl: C.median(times[impl]) for impl in IMPLS}
        med_cpu = {impl: C.median(cpu[impl]) for impl in IMPLS}
        layout = "NHWC" if cl else "NCHW"
        for impl in IMPLS:
            print(
                f"SUMMARY pool_speed benchmark={bench} impl={impl} layout={layout} threads={a.threads} "
                f"s_per_iteration={C.fmt_s(med[impl])} cpu_s_per_iteration={C.fmt_s(med_cpu[impl])} rounds={a.rounds}"
            )
        ratio = med["conv"] / med["avg_pool2d"]
        ratio_cpu = med_cpu["conv"] / med_cpu["avg_pool2d"]
        print(
            f"SUMMARY pool_speed benchmark={bench} layout={layout} conv/avg_pool2d={ratio:.3f} "
            f"cpu_time_conv/avg_pool2d={ratio_cpu:.3f} "
            f"max_weight_diff_after_{a.warmup + a.rounds}_iterations={diff:.3g}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
