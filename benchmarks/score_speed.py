"""Scoring speed: anomaly scores d(x, G(E(x))) per second, per benchmark resolution.

    python benchmarks/score_speed.py [--device cuda] [--quick] [--checkpoint RUN/checkpoints/latest.pt]

For each config (default: mnist 1x32x32, cifar10 3x32x32, celeba 3x64x64) a freshly initialised (seeded) encoder
and generator with the config's perceptual distance (--vgg: by default the paper's compute, VGG-19 to relu4_2 with seeded
random weights; `substitute`: the offline weights to relu3_1) score a batch-split tensor of images already on the device, exactly as
piad.run.evaluation.AnomalyScorer.score does (speed does not depend on the weights). With --checkpoint, that trained
run is timed instead. The median over repeats is reported, for a fresh score and for a score that reuses f(x) of
the images (piad.run.evaluation.score_checkpoints: a further checkpoint or snapshot with the same distance).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import _common as C  # noqa: I001  (puts the repository on sys.path)
import torch


def fresh_scorer(cfg, device):
    from piad.run.evaluation import AnomalyScorer
    from piad.model.networks import Encoder, Generator
    from piad.run.distance import make_distance
    from piad.run.training import seed_everything
    seed_everything(cfg.resolved_seed())
    enc = Encoder(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.e_widths)
    gen = Generator(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.g_widths)
    return AnomalyScorer(cfg, enc, gen, make_distance(cfg, cfg.resolved_seed())).to(device).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="mnist,cifar10,celeba", help=f"comma-separated, from {C.BENCHMARKS}")
    p.add_argument("--vgg", default="paper", choices=C.VGG_CHOICES,
                   help="perceptual network: paper (relu4_2, random weights; default), substitute (relu3_1), imagenet")
    p.add_argument("--checkpoint", default=None, help="time this trained run instead of fresh models")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats")
    p.add_argument("--images", type=int, default=None, help="images per repeat (default 2048, --quick 256)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, --quick 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format (GPU option)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU option; changes rounding)")
    a = p.parse_args(argv)
    device = C.setup_device(a.device, a.threads)
    from piad.run.evaluation import AnomalyScorer
    C.print_environment(device, " ".join(["python", *sys.argv]))
    n_img = a.images or (256 if a.quick else 2048)
    repeats = a.repeats or (2 if a.quick else 5)

    if a.checkpoint:
        scorers = [("checkpoint", AnomalyScorer.from_checkpoint(a.checkpoint, device))]
    else:
        scorers = [(b, fresh_scorer(C.bench_config(b.strip(), vgg=a.vgg), device)) for b in a.configs.split(",") if b.strip()]
    for name, scorer in scorers:
        cfg = scorer.cfg
        if a.channels_last:
            scorer.to(memory_format=torch.channels_last)
        g = torch.Generator().manual_seed(0)
        x = (torch.rand(n_img, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
        if a.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()

        with ctx:
            fx = scorer.features(x, a.batch_size) if scorer.distance.uses_vgg else None

        def run(shared):
            with ctx, torch.no_grad():
                out = scorer.score(x, a.batch_size, features=fx if shared else None)
            C.sync(device)
            return out
        run(False)                              # warm-up (cudnn autotuning, allocator)
        times: dict[bool, list[float]] = {False: [], True: []}
        modes = (False, True) if fx is not None else (False,)
        for _ in range(repeats):
            for shared in modes:                # interleaved, like train_speed.py
                t = time.perf_counter()
                run(shared)
                times[shared].append(time.perf_counter() - t)
        s = C.median(times[False])
        line = (f"SUMMARY score_speed config={name} image={cfg.channels}x{cfg.image_size}x{cfg.image_size} "
                f"device={device.type} batch={a.batch_size} images={n_img} s={C.fmt_s(s)} img_per_s={n_img / s:.1f}")
        if fx is not None:
            s2 = C.median(times[True])
            line += (f" shared_fx_img_per_s={n_img / s2:.1f} shared_fx_ratio={s / s2:.2f}x")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
