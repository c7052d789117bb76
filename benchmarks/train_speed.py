"""Training speed: seconds per iteration of the authors' recipe vs piad's Trainer, and batched ensembles.

    python benchmarks/train_speed.py --benchmark mnist --device cpu [--models K] [--quick]

Variants, measured in ONE process and interleaved round-robin (one iteration of each per round, so that load
changes on a shared machine hit all of them alike); the median over rounds is reported:

  authors    the authors' per-iteration recipe re-implemented with piad's networks and losses
             (benchmarks/_authors_step.py: DataLoader + PIL per sample, VGG of the real batch every iteration,
             .item() on every loss, NumPy weight statistics, retain_graph backward then scaled .grad)
  plain      piad.run.training.Trainer with cache_features=False (`piad train --no-cache`)
  optimised  piad.run.training.Trainer as configured (feature cache of f(x) on, one backward through E per E/G step,
             foreach gradient combination)
  proposed   optimised plus the opt-in channels_last memory format (benchmarks/_proposed.py); same math, other
             rounding
  ensemble   piad.run.ensemble.EnsembleTrainer with K members (vmap; and `ensemble-loop`), only with --models K > 1

One iteration = n_dis critic steps + one E/G step (batch 32). The split into critic steps and E/G step
synchronises the device between them (pass --no-split on GPUs to time whole iterations only). The VGG share is
measured separately in the same rounds: the distance's VGG work of one E/G step (forward of the reconstruction
and its backward, plus the forward of the real batch where it is not cached) divided by the iteration time.
The weight rule's statistics run once per 100 iterations and are not inside the timed iterations.

Images: the offline digits (upsampled to the benchmark's size and channels) or synthetic blobs. Perceptual network
(--vgg): by default the paper's compute, VGG-19 to relu4_2 with seeded random weights (the ImageNet weights cannot
be downloaded here, and a convolution costs the same whatever its weights); `--vgg substitute` uses the offline
substitute weights, which stop at relu3_1. Speed depends neither on the image content nor on the weights.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time

import _common as C  # noqa: I001  (puts the repository on sys.path)
import torch
from _authors_step import AuthorsStyleTrainer
from _proposed import ProposedTrainer


def _timed_variant(name, obj, step, clock: C.Clock):
    obj.critic_step = clock.wrap("critic", obj.critic_step)
    obj.encoder_generator_step = clock.wrap("eg", obj.encoder_generator_step)
    return {"name": name, "obj": obj, "step": step, "times": [], "critic": [], "eg": [], "vgg": []}


def _vgg_probe(distance, x, rec_like, cached: bool):
    """The VGG work of one E/G step: f(x) unless cached, f(rec) forward and backward to rec."""

    def run():
        with torch.no_grad():
            fx = distance.features(x)
        rec = rec_like.detach().requires_grad_(True)
        if cached:
            d = distance.from_features(fx, rec)  # fx is then only a stand-in for the cached tensor
        else:
            d = distance(x, rec)
        d.mean().backward()

    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--benchmark", default="mnist", choices=C.BENCHMARKS)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", type=int, default=1, help="K > 1 also times a batched ensemble of K models")
    p.add_argument("--quick", action="store_true", help="few rounds (a few minutes on a CPU)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10, --quick 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds first (default 2, --quick 1)")
    p.add_argument("--data", default="digits", choices=("digits", "synthetic"))
    p.add_argument(
        "--vgg",
        default="paper",
        choices=C.VGG_CHOICES,
        help="perceptual network: paper (relu4_2, random weights: the paper's compute; default), "
        "substitute (the offline weights, relu3_1 only), imagenet (downloads)",
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: the benchmark's (32)")
    p.add_argument(
        "--variants",
        default="authors,plain,optimised,proposed",
        help="comma-separated subset of authors,plain,optimised,proposed",
    )
    p.add_argument("--ensemble-modes", default="vmap,loop", help="with --models K > 1: vmap and/or loop")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--no-split", action="store_true", help="no device synchronisation inside an iteration")
    # GPU options for the optimised variant (off by default; they were not measurable where this was written)
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (optimised, ensemble)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast of the optimised iteration (changes rounding)")
    p.add_argument("--compile", action="store_true", help="torch.compile E, G and the VGG of the optimised Trainer")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matmuls/convolutions on CUDA (changes rounding)")
    a = p.parse_args(argv)

    device = C.setup_device(a.device, a.threads)
    from piad.run.ensemble import EnsembleTrainer
    from piad.run.training import Trainer

    if device.type == "cuda":
        if a.tf32:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
    rounds = a.rounds or (3 if a.quick else 10)
    warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
    C.print_environment(device, " ".join(["python", *sys.argv]))

    ov = {} if a.batch_size is None else {"batch_size": a.batch_size}
    cfg = C.bench_config(a.benchmark, ov, a.vgg)
    data = C.bench_data(cfg, a.data)
    print(
        f"config: {a.benchmark} image {cfg.channels}x{cfg.image_size}x{cfg.image_size} batch {cfg.batch_size} "
        f"n_dis {cfg.n_dis} distance {cfg.distance} layer {cfg.layer} vgg {cfg.vgg_weights}; data {a.data} "
        f"({data.train.shape[0]} training images); rounds {rounds} after {warmup} warm-up"
    )
    tmp = tempfile.TemporaryDirectory(prefix="piad_bench_")
    clock = C.Clock(device, enabled=not a.no_split)
    variants = []
    wanted = [v.strip() for v in a.variants.split(",") if v.strip()]
    x_probe = data.train[: cfg.batch_size].to(device)
    rec_probe = torch.randn_like(x_probe)
    if "authors" in wanted:
        src = 28 if a.benchmark in ("mnist", "fashion_mnist") else None  # MNIST: 28x28 resized per sample
        au = AuthorsStyleTrainer(cfg, data.train, device, source_size=src)
        v = _timed_variant("authors", au, au.train_iteration, clock)
        v["vgg_fn"] = _vgg_probe(au.distance, x_probe, rec_probe, cached=False)
        variants.append(v)
    for name, cache, cls in (
        ("plain", False, Trainer),
        ("optimised", True, Trainer),
        ("proposed", True, ProposedTrainer),
    ):
        if name not in wanted:
            continue
        c = C.bench_config(a.benchmark, {**ov, "cache_features": cache}, a.vgg)
        tr = cls(c, tmp.name, device, data=data, progress=False)
        step = tr.train_iteration
        if name == "optimised":
            step = _gpu_options(tr, step, a, device)
        v = _timed_variant(name, tr, step, clock)
        v["vgg_fn"] = _vgg_probe(tr.distance, x_probe, rec_probe, cached=tr.train_f is not None)
        variants.append(v)
    if a.models > 1:
        for mode in [m.strip() for m in a.ensemble_modes.split(",") if m.strip()]:
            cfgs = [C.bench_config(a.benchmark, {**ov, "normal_class": 0, "run": k}, a.vgg) for k in range(a.models)]
            datas = [C.bench_data(cfg, a.data, normal_class=k) for k in range(a.models)]
            ens = EnsembleTrainer(cfgs, [f"{tmp.name}/m{k}" for k in range(a.models)], device, datas=datas, mode=mode)
            if a.channels_last:
                ens.train_x = ens.train_x.contiguous(memory_format=torch.channels_last)
            name = "ensemble" if mode == "vmap" else f"ensemble-{mode}"
            v = _timed_variant(name, ens, ens.train_iteration, clock)
            v["models"] = a.models
            variants.append(v)

    for r in range(warmup + rounds):
        for v in variants:
            C.sync(device)
            t = time.perf_counter()
            v["step"]()
            C.sync(device)
            dt = time.perf_counter() - t
            parts = clock.pop()
            v["last"] = dt
            if r >= warmup:
                v["times"].append(dt)
                v["critic"].append(parts.get("critic", float("nan")))
                v["eg"].append(parts.get("eg", float("nan")))
            if "vgg_fn" in v:
                C.sync(device)
                t = time.perf_counter()
                v["vgg_fn"]()
                C.sync(device)
                if r >= warmup:
                    v["vgg"].append(time.perf_counter() - t)
        print(
            f"round {r + 1}/{warmup + rounds}"
            + (" (warm-up)" if r < warmup else "")
            + ": "
            + "  ".join(f"{v['name']} {v['last']:.3f}s" for v in variants),
            flush=True,
        )

    print()
    med, best = {}, {}
    for v in variants:
        k = v.get("models", 1)
        s = C.median(v["times"])
        med[v["name"]] = (s, k)
        best[v["name"]] = (min(v["times"]), k)
        vgg = C.median(v["vgg"]) if v["vgg"] else float("nan")
        share = f"{100 * vgg / s:.0f}%" if v["vgg"] else "n/a"
        print(
            f"SUMMARY train_speed benchmark={a.benchmark} device={device.type} batch={cfg.batch_size} "
            f"variant={v['name']} models={k} s_per_it={C.fmt_s(s)} min_s={C.fmt_s(best[v['name']][0])} "
            f"critic_s={C.fmt_s(C.median(v['critic']))} "
            f"eg_s={C.fmt_s(C.median(v['eg']))} vgg_s={C.fmt_s(vgg)} vgg_share={share} "
            f"model_it_per_s={C.fmt_s(k / s)}"
        )
    if "optimised" in med:
        for stat, table in (("medians", med), ("minima", best)):
            print(
                f"SUMMARY train_speed benchmark={a.benchmark} device={device.type} speed ratios from {stat} "
                "(model-it/s over model-it/s): " + " ".join(_ratios(table))
            )
    tmp.cleanup()
    return 0


def _ratios(table: dict) -> list[str]:
    so = table["optimised"][0]
    out = [f"optimised/{b}={table[b][0] / so:.2f}x" for b in ("authors", "plain") if b in table]
    if "proposed" in table:
        out.append(f"proposed/optimised={so / table['proposed'][0]:.2f}x")
        if "authors" in table:
            out.append(f"proposed/authors={table['authors'][0] / table['proposed'][0]:.2f}x")
    for name, (s, k) in table.items():
        if name.startswith("ensemble"):
            out.append(f"{name}(K={k})/optimised(K=1)={(k / s) * so:.2f}x")
    return out


def _gpu_options(tr, step, a, device):
    """Optional settings for the optimised Trainer (none is on by default)."""
    if a.channels_last:
        tr.nets.to(memory_format=torch.channels_last)
        tr.distance.to(memory_format=torch.channels_last)
        tr.train_x = tr.train_x.contiguous(memory_format=torch.channels_last)
    if a.compile:
        # the E/G step backpropagates the reconstruction loss with retain_graph=True (piad.model.objective), which
        # compiled backward functions with donated buffers refuse
        torch._functorch.config.donated_buffer = False
        n = tr.nets
        n.encoder, n.generator = torch.compile(n.encoder), torch.compile(n.generator)
        if tr.distance.vgg is not None:
            tr.distance.vgg.net = torch.compile(tr.distance.vgg.net)
    if a.bf16:
        inner = step

        def step():
            with torch.autocast(device.type, dtype=torch.bfloat16):
                inner()

        return step
    return step


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
