"""Does an optional speed setting change results? ROC AUC with and without it, same seeds, paired.

    python benchmarks/layout_auc.py --setting channels_last --benchmark digits --classes 0 1 --runs 0 1 \
        --iterations 150 --threads 1

For every (class, run) the same config (same seed) is trained twice, once plainly and once with the setting,
and evaluated. The setting changes only float rounding, but GAN training amplifies rounding differences, so the
two runs drift apart like runs with different seeds would not quite; what matters is whether the AUC differences
are within the run-to-run spread. Printed: one line per pair, the mean paired difference, and the spread of the
plain AUCs over runs of one class (run-to-run noise).

Settings: channels_last (piad train --channels-last), bf16 (piad train --bf16: bf16 autocast of the training
steps), bf16_channels_last (both). "plain" is fp32 in NCHW. Perceptual network: the offline substitute (VGG-19 to
relu3_1 with the offline CIFAR-10 statistics) when ../shared/assets has it, else random weights (relu2_1).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import _common as C  # noqa: I001  (puts the repository on sys.path)

SETTINGS = ("channels_last", "bf16", "bf16_channels_last")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="channels_last", choices=SETTINGS)
    p.add_argument("--benchmark", default="digits", help="a piad benchmark with offline data (digits, mnist, ...)")
    p.add_argument("--architecture", default="mnist", help="whose networks to train (default: the MNIST config)")
    p.add_argument("--classes", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs", type=int, nargs="+", default=[0, 1])
    p.add_argument("--iterations", type=int, default=150)
    p.add_argument("--data-root", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    device = C.setup_device(a.device, a.threads)
    from piad.data import load_benchmark
    from piad.experiments.profiles import offline_stats_path
    from piad.run.config import make_config
    from piad.run.evaluation import evaluate
    from piad.run.training import train

    C.print_environment(device, " ".join(["python", *sys.argv]))
    arch = make_config(a.architecture)
    stats = offline_stats_path()
    if C.SUBSTITUTE_VGG.exists() and stats.exists():
        perceptual = {"vgg_weights": str(C.SUBSTITUTE_VGG), "layer": "relu3_1", "feature_stats": str(stats)}
    else:
        perceptual = {"vgg_weights": "random", "layer": "relu2_1", "feature_stats": None}
    keys = ("image_size", "channels", "latent_dim", "latent_size", "g_widths", "e_widths", "dx_widths", "dz_hidden")
    print(
        f"setting {a.setting}; data {a.benchmark}, networks of {a.architecture}, {a.iterations} iterations, "
        f"perceptual {perceptual['vgg_weights']} / {perceptual['layer']}"
    )
    rows = []
    with tempfile.TemporaryDirectory(prefix="piad_layout_") as tmp:
        for c in a.classes:
            data = load_benchmark(
                a.benchmark, c, data_root=a.data_root, image_size=arch.image_size, channels=arch.channels
            )
            for r in a.runs:
                ov = {
                    **{k: getattr(arch, k) for k in keys},
                    **perceptual,
                    "iterations": a.iterations,
                    "normal_class": c,
                    "run": r,
                    "log_every": 50,
                    "sample_every": a.iterations,
                    "checkpoint_every": a.iterations,
                }
                cfg = make_config(a.benchmark, ov)
                auc = {}
                for variant in ("plain", a.setting):
                    out = f"{tmp}/{c}_{r}_{variant}"
                    t0 = time.perf_counter()
                    train(
                        cfg,
                        out,
                        device,
                        data=data,
                        progress=False,
                        channels_last="channels_last" in variant,
                        bf16="bf16" in variant,
                    )
                    auc[variant] = evaluate(out, device=device, data=data)["roc_auc"]
                    print(
                        f"class {c} run {r} {variant:14s} ROC AUC {auc[variant]:.4f} "
                        f"({time.perf_counter() - t0:.0f} s)",
                        flush=True,
                    )
                rows.append((c, r, auc["plain"], auc[a.setting]))
    diffs = [s - p_ for _, _, p_, s in rows]
    print()
    for c, r, p_, s in rows:
        print(f"SUMMARY layout_auc class={c} run={r} plain={p_:.4f} {a.setting}={s:.4f} diff={s - p_:+.4f}")
    spread = [statistics.stdev([p_ for c2, _, p_, _ in rows if c2 == c]) for c in a.classes if len(a.runs) > 1]
    print(
        f"SUMMARY layout_auc mean_diff={statistics.mean(diffs):+.4f} "
        f"mean_abs_diff={statistics.mean(abs(d) for d in diffs):.4f} "
        f"run_to_run_sd_plain={statistics.mean(spread) if spread else float('nan'):.4f} "
        f"(mean over classes of the sd over runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
