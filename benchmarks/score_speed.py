"""Scoring speed: anomaly scores d(x, G(E(x))) per second, per benchmark resolution.

    python benchmarks/score_speed.py [--device cuda] [--quick] [--checkpoint RUN/checkpoints/latest.pt]

For each config (default: mnist 1x32x32, cifar10 3x32x32, celeba 3x64x64) a freshly initialised (seeded) encoder
and generator with the config's perceptual distance (--vgg: by default the paper's compute, VGG-19 to relu4_2 with
seeded random weights; `substitute`: the offline weights to relu3_1) score a batch-split tensor of images already on
the device, exactly as piad.run.evaluation.AnomalyScorer.score does (speed does not depend on the weights). With
--checkpoint, that trained run is timed instead. The median over repeats is reported, for a fresh score and for a
score that reuses f(x) of the images (piad.run.evaluation.score_checkpoints: a further checkpoint or snapshot with the
same distance). --compare-layouts times NCHW and channels_last interleaved and prints their ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import sys
import time

import _common as C  # noqa: I001  (puts the repository on sys.path)
import torch


def fresh_scorer(cfg, device):
    from piad.model.networks import Encoder, Generator
    from piad.run.distance import make_distance
    from piad.run.evaluation import AnomalyScorer
    from piad.run.training import seed_everything

    seed_everything(cfg.resolved_seed())
    enc = Encoder(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.e_widths)
    gen = Generator(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.g_widths)
    return AnomalyScorer(cfg, enc, gen, make_distance(cfg, cfg.resolved_seed())).to(device).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--configs", default="mnist,cifar10,celeba", help=f"comma-separated, from {C.BENCHMARKS}")
    p.add_argument(
        "--vgg",
        default="paper",
        choices=C.VGG_CHOICES,
        help="perceptual network: paper (relu4_2, random weights; default), substitute (relu3_1), imagenet",
    )
    p.add_argument("--checkpoint", default=None, help="time this trained run instead of fresh models")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats")
    p.add_argument("--images", type=int, default=None, help="images per repeat (default 2048, --quick 256)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5, --quick 2)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="score in the channels_last memory format (AnomalyScorer.use_channels_last)",
    )
    p.add_argument(
        "--test-split",
        action="store_true",
        help="with --checkpoint: score a seeded sample of --images images of the run's test split and "
        "print each layout's ROC AUC on it",
    )
    p.add_argument(
        "--compare-layouts",
        action="store_true",
        help="time NCHW and channels_last interleaved in one run and print their ratio",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU option; changes rounding)")
    a = p.parse_args(argv)
    if a.test_split and not a.checkpoint:
        p.error("--test-split needs --checkpoint (a trained run whose test split is scored)")
    device = C.setup_device(a.device, a.threads)
    from piad.run.evaluation import AnomalyScorer

    C.print_environment(device, " ".join(["python", *sys.argv]))
    n_img = a.images or (256 if a.quick else 2048)
    repeats = a.repeats or (2 if a.quick else 5)

    if a.checkpoint:
        scorers = [("checkpoint", AnomalyScorer.from_checkpoint(a.checkpoint, device))]
    else:
        scorers = [
            (b, fresh_scorer(C.bench_config(b.strip(), vgg=a.vgg), device)) for b in a.configs.split(",") if b.strip()
        ]
    layouts = ["NCHW", "channels_last"] if a.compare_layouts else ["channels_last" if a.channels_last else "NCHW"]
    for name, base in scorers:
        cfg = base.cfg
        g = torch.Generator().manual_seed(0)
        # Drawn in both modes: the --test-split sample below follows this draw in g's stream, and the Performance
        # page's layout table (ROC AUC 0.630057) was measured with that order.
        x = (torch.rand(n_img, cfg.channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1).to(device)
        labels = None
        if a.test_split:  # a seeded sample of the run's own test images, for ROC AUC
            from piad.data import load_for_config

            data = load_for_config(cfg)
            pick = torch.randperm(len(data.test), generator=g)[:n_img]
            x, labels = data.test[pick].to(device), data.test_labels[pick].numpy()
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if a.bf16 else contextlib.nullcontext()
        variants = {}
        for layout in layouts:
            scorer = copy.deepcopy(base)
            if layout == "channels_last":
                scorer.use_channels_last()  # as evaluate(channels_last=True) and the offline CIFAR-10 grid
            with ctx:
                fx = scorer.features(x, a.batch_size) if scorer.distance.uses_vgg else None
            variants[layout] = (scorer, fx)

        # called only within this iteration of the loop, so the closure sees this iteration's variants, ctx and x
        def run(layout, shared):
            scorer, fx = variants[layout]  # noqa: B023 (called within the iteration that defines it)
            with ctx, torch.no_grad():  # noqa: B023 (as above)
                out = scorer.score(x, a.batch_size, features=fx if shared else None)  # noqa: B023 (as above)
            C.sync(device)
            return out

        modes = (False, True) if base.distance.uses_vgg else (False,)
        times = {(lay, sh): [] for lay in layouts for sh in modes}
        warm = {lay: run(lay, False) for lay in layouts}  # warm-up (cudnn autotuning, allocator, oneDNN)
        for _ in range(repeats):
            for key in times:  # interleaved, like train_speed.py: ratios within a run are fair
                t = time.perf_counter()
                run(*key)
                times[key].append(time.perf_counter() - t)
        for lay in layouts:
            s = C.median(times[(lay, False)])
            line = (
                f"SUMMARY score_speed config={name} image={cfg.channels}x{cfg.image_size}x{cfg.image_size} "
                f"device={device.type} layout={lay} batch={a.batch_size} images={n_img} s={C.fmt_s(s)} "
                f"img_per_s={n_img / s:.1f}"
            )
            if True in modes:
                s2 = C.median(times[(lay, True)])
                line += f" shared_fx_img_per_s={n_img / s2:.1f} shared_fx_ratio={s / s2:.2f}x"
            if labels is not None and labels.min() != labels.max():
                from piad.run.evaluation import roc_auc

                line += f" roc_auc={roc_auc(warm[lay].numpy(), labels):.6f}"
            print(line, flush=True)
        if len(layouts) == 2:
            speedup = {sh: C.median(times[("NCHW", sh)]) / C.median(times[("channels_last", sh)]) for sh in modes}
            ratio = " ".join(f"{'shared_fx' if sh else 'fresh'}={r:.2f}x" for sh, r in speedup.items())
            diff = ((warm["channels_last"] - warm["NCHW"]).abs() / warm["NCHW"].abs().clamp_min(1e-12)).max()
            print(
                f"SUMMARY score_speed config={name} channels_last_speedup {ratio} "
                f"max_relative_score_difference={float(diff):.2e}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
