"""The captured iteration on a GPU (issue 30): graph == eager, model-it/s eager vs captured at K = 1, 10, 20, 40,
GPU busy time vs wall time and kernels per iteration, and the ensemble width that fits in memory.

    python benchmarks/graph_check.py [--device cuda] [--ks 1,10,20,40] [--iterations 30] [--quick]

Parts (each prints SUMMARY lines; one failing part does not stop the others):

equal     two runs of the same seeded config, 30 iterations with weight-rule iterations every 10: step mode
          "static" (the restructured iteration, eager) and "graph" (recorded once, replayed), both with capturable
          Adam, deterministic cuDNN, no TF32: all parameters compared with torch.equal (one model and K = 3);
          and today's eager step against both (max abs weight difference: capturable Adam computes its bias
          corrections on the device, which may round differently).
speed     model-iterations per second for modes eager (today), static and graph at each K (K = 1: the Trainer,
          also with channels_last; K > 1: the vmapped EnsembleTrainer), the weight rule off (as train_speed.py
          times it), warm-up and capture untimed; each timed stretch is synchronised at its ends.
profile   torch.profiler over 5 iterations of eager and graph at K = 1 and 10: CUDA kernels per iteration and the
          GPU's busy time (sum of kernel times) against the wall time per iteration: where the time goes.
memory    piad.run.ensemble_memory's measured bytes per member and K that fits (80% of the free memory, cap 40).

Config: MNIST (1x32x32, batch 32, n_dis 2), the paper's compute (VGG-19 to relu4_2, seeded random weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
import traceback

import _common as C  # (puts the repository on sys.path)
import torch


def _trainer(cfg, data, k, mode, device, tmp, channels_last=False):
    from piad.run.ensemble import EnsembleTrainer
    from piad.run.training import Trainer

    outs = [f"{tmp}/{mode}{'_cl' if channels_last else ''}_{k}_{i}" for i in range(k)]
    for o in outs:
        os.makedirs(o, exist_ok=True)
    if k == 1:
        t = Trainer(cfg, outs[0], device, data=data, progress=False, channels_last=channels_last)
    else:
        t = EnsembleTrainer([dataclasses.replace(cfg, run=i) for i in range(k)], outs, device, datas=[data] * k)
    t.step_mode = mode
    if mode == "graph" and device.type != "cuda":
        raise RuntimeError("graph mode needs CUDA (dry run on the CPU)")
    if mode != "eager" and device.type == "cuda":
        for opt in (t.opt_dx, t.opt_dz, t.opt_eg):
            for g in opt.param_groups:
                g["capturable"] = True  # as graph mode sets it, so that static and graph run the same Adam
    return t


def _empty_cache(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _params(t):
    return list(t.nets.parameters()) if hasattr(t, "nets") else t.E.params + t.G.params + t.DX.params + t.DZ.params


def part_equal(cfg, data, device, tmp, iterations):
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    c = dataclasses.replace(cfg, policy_every=10, iterations=iterations)
    for k in (1, 3):
        runs = {}
        for mode in ("eager", "static", "graph") if device.type == "cuda" else ("eager", "static"):
            t = _trainer(c, data, k, mode, device, tmp)
            torch.backends.cudnn.benchmark = False  # the Trainer turns it on
            for _ in range(iterations):
                t.train_iteration()
            C.sync(device)
            runs[mode] = [p.detach().clone() for p in _params(t)]
        runs.setdefault("graph", runs["static"])  # (dry run on the CPU)
        equal = all(torch.equal(a, b) for a, b in zip(runs["static"], runs["graph"], strict=True))
        d_eager = max((a - b).abs().max().item() for a, b in zip(runs["eager"], runs["graph"], strict=True))
        print(
            f"SUMMARY graph_check part=equal K={k} iterations={iterations} graph_equals_static={equal} "
            f"max_abs_diff_graph_vs_todays_eager={d_eager:.3g}"
        )
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True


def _rate(t, k, warm, n, device):
    for _ in range(warm):
        t.train_iteration()
    C.sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        t.train_iteration()
    C.sync(device)
    dt = time.perf_counter() - t0
    return n * k / dt, dt / n


def part_speed(cfg, data, device, tmp, ks, n):
    c = dataclasses.replace(cfg, policy_every=10**9)
    for k in ks:
        for mode in ("eager", "static", "graph"):
            for cl in (False, True) if k == 1 else (False,):
                try:
                    t = _trainer(c, data, k, mode, device, tmp, channels_last=cl)
                    rate, per = _rate(t, k, 5, n if k <= 10 else max(5, n // 2), device)
                    print(
                        f"SUMMARY graph_check part=speed K={k} mode={mode} layout={'NHWC' if cl else 'NCHW'} "
                        f"model_it_per_s={rate:.1f} s_per_iteration={per:.4g}"
                    )
                    del t
                    _empty_cache(device)
                except Exception as e:  # noqa: BLE001 - report and go on (e.g. out of memory at K = 40)
                    print(f"SUMMARY graph_check part=speed K={k} mode={mode} error={type(e).__name__}: {e}"[:300])
                    _empty_cache(device)


def part_profile(cfg, data, device, tmp):
    from torch.profiler import ProfilerActivity, profile

    c = dataclasses.replace(cfg, policy_every=10**9)
    for k in (1, 10):
        for mode in ("eager", "graph"):
            t = _trainer(c, data, k, mode, device, tmp)
            for _ in range(5):
                t.train_iteration()
            C.sync(device)
            n = 5
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                t0 = time.perf_counter()
                for _ in range(n):
                    t.train_iteration()
                C.sync(device)
                wall = (time.perf_counter() - t0) / n
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.device_time for e in kernels) / 1e6 / n  # us -> s
            print(
                f"SUMMARY graph_check part=profile K={k} mode={mode} kernels_per_iteration={len(kernels) / n:.0f} "
                f"gpu_busy_s_per_iteration={busy:.4g} wall_s_per_iteration={wall:.4g} busy_share={busy / wall:.2f}"
            )
            del t


def part_memory(cfg, data, device):
    from piad.run.ensemble_memory import members_that_fit, probe_member_memory

    shared, per = probe_member_memory(cfg, device, data)
    free, total = torch.cuda.mem_get_info(device)
    print(
        f"SUMMARY graph_check part=memory shared_MiB={shared / 2**20:.0f} per_member_MiB={per / 2**20:.0f} "
        f"free_GiB={free / 2**30:.1f} total_GiB={total / 2**30:.1f} K_fit={members_that_fit(shared, per, free)}"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--benchmark", default="mnist", choices=C.BENCHMARKS)
    p.add_argument("--ks", default="1,10,20,40")
    p.add_argument("--iterations", type=int, default=30, help="timed iterations per measurement (K > 10: half)")
    p.add_argument("--parts", default="equal,speed,profile,memory")
    p.add_argument("--quick", action="store_true", help="a dry run of the script (tiny settings)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    a = p.parse_args(argv)
    device = C.setup_device(a.device, a.threads)
    C.print_environment(device, " ".join(["python", *sys.argv]))
    if device.type != "cuda" and not a.quick:
        print("graph_check: needs a CUDA device (--quick: a dry run of the script elsewhere)")
        return 0
    if a.quick:  # tiny networks and images: only the script is exercised
        from piad.run.config import make_config

        cfg = make_config("synthetic")
        data = C.bench_data(cfg, "synthetic")
    else:
        cfg = C.bench_config(a.benchmark, {}, "paper")
        data = C.bench_data(cfg)
    ks = [int(k) for k in a.ks.split(",")]
    with tempfile.TemporaryDirectory(prefix="piad_graph_") as tmp:
        for part in a.parts.split(","):
            t0 = time.perf_counter()
            print(f"== part {part}", flush=True)
            try:
                if part == "equal":
                    part_equal(cfg, data, device, tmp, 3 if a.quick else 30)
                elif part == "speed":
                    part_speed(cfg, data, device, tmp, ks, a.iterations)
                elif part == "profile":
                    part_profile(cfg, data, device, tmp)
                elif part == "memory":
                    part_memory(cfg, data, device)
            except Exception:  # noqa: BLE001 - print it and go on with the next part
                traceback.print_exc()
                print(f"SUMMARY graph_check part={part} error=see traceback")
            print(f"== part {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
