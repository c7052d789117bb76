"""`piad` command line: train, evaluate, score, feature-stats, data describe, reproduce, book."""

from __future__ import annotations

import argparse
import csv
import os
import signal
import sys
import threading
from pathlib import Path

from piad.errors import PiadError, os_error
from piad.experiments.profiles import PROFILES

SCORE_NHWC_HELP = "score in the NHWC memory layout (faster convolutions on CPU; same math, other float rounding)"


_LOG_LOCK = threading.Lock()


def log_line(message: str) -> None:
    """One progress line, written whole: lines logged by parallel runs never merge."""
    with _LOG_LOCK:
        sys.stdout.write(f"{message}\n")
        sys.stdout.flush()


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse then reports a bad value in one line, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer; expected e.g. 64")
    return value


MAX_BATCH_SIZE = 65536
MAX_IMAGE_SIZE = 4096


def bounded_int(low: int, high: int, example: int):
    """argparse type: an integer in [low, high] (a bad value: one line, exit code 2)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: expected an integer from {low} to {high}, e.g. {example}")
        return value

    return parse


batch_size = bounded_int(1, MAX_BATCH_SIZE, 64)


def _add_device(p, threads: bool = True):
    """--device (and --threads) as every entry point takes them."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto (default auto)")
    if threads:
        p.add_argument(
            "--threads", type=int, help="CPU threads for torch (default: torch's; use the number of free cores)"
        )


def _add_train(sub):
    p = sub.add_parser(
        "train",
        help="train one PIAD model into a run directory",
        description="Train PIAD on the normal class of a benchmark. Writes DIR/config.json, "
        "checkpoints, log.csv, policy.csv and sample grids.",
    )
    p.add_argument(
        "--benchmark",
        required=True,
        help="mnist, fashion_mnist, cifar10, coil100, celeba, lsun, digits, folder or synthetic",
    )
    p.add_argument("--normal-class", type=int, help="index of the normal class (default 0)")
    p.add_argument("--run", type=int, help="run number; with no --seed it changes the seed (default 0)")
    p.add_argument("--iterations", type=int, help="training iterations (default: the paper's for the benchmark)")
    _add_device(p)
    p.add_argument("--seed", type=int, help="random seed (default: derived from normal class and run)")
    p.add_argument("--data-root", help="folder or archive with the dataset (default: $PIAD_DATA, then download)")
    p.add_argument("--ablation", help="CIFAR-10 ablation variant: l2, perceptual_l2, perceptual_l1, l2_manual")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoints/latest.pt")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in DIR: the new run is trained beside it and replaces it only once it has finished "
        "(a refused, failed or interrupted new run leaves DIR as it was)",
    )
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override any config key, e.g. --set vgg_weights=random layer=relu3_1 batch_size=16",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute VGG features of the real images every step (same math, slower; for timing)",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="NHWC memory format (faster convolutions on CPU; same math, other float rounding)",
    )
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast of the training steps: faster on CPUs with AVX512-BF16 (CIFAR-10-size "
        "networks 1.5x), but it lowered ROC AUC beyond run-to-run noise in a paired check "
        "(book: Performance); weights stay fp32",
    )
    p.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on CUDA, record the training iteration once as a CUDA graph and replay it (same math; weight-rule "
        "iterations stay eager). Default: off until a GPU check shows graph == eager and a gain (issue 30)",
    )
    p.add_argument("--evaluate", action="store_true", help="evaluate right after training")


def _add_evaluate(sub):
    p = sub.add_parser(
        "evaluate",
        help="score the test split with a run's final weights (ROC AUC)",
        description="Compute anomaly scores d(x, G(E(x))) on the test split and write "
        "DIR/metrics.json and DIR/scores.csv.",
    )
    p.add_argument("--out", required=True, help="run directory written by `piad train`")
    _add_device(p)
    p.add_argument("--data-root", help="override the data root saved in the run's config")
    p.add_argument("--channels-last", action="store_true", help=SCORE_NHWC_HELP)


def _add_score(sub):
    p = sub.add_parser(
        "score",
        help="anomaly scores for your own images",
        description="Print (or write as CSV) an anomaly score per image for any image size or mode; "
        "unreadable files are reported and skipped.",
    )
    p.add_argument("paths", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--checkpoint", required=True, help="a run's checkpoints/latest.pt (or a run directory)")
    p.add_argument("--csv", help="write path,score rows to this CSV file instead of printing")
    p.add_argument(
        "--maps",
        help="folder for PNG overlays of the per-location anomaly map, one per image at the "
        "image's size (at most 2048 pixels on its longer side; named after its path relative to the inputs' common "
        "folder, the whole file name where two stems meet), and "
        "colorbar.png. The colour scale is fixed by the model: blue = 0, red = the 99th "
        "percentile of per-location errors over its training images (or above)",
    )
    _add_device(p)
    p.add_argument("--batch-size", type=batch_size, default=64, help="images scored at once (default 64)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing --csv file and existing maps in --maps"
    )


def _add_feature_stats(sub):
    p = sub.add_parser(
        "feature-stats",
        help="per-channel statistics of VGG features for normalisation",
        description="Compute mean/std per channel of every VGG-19 ReLU layer up to --layer over a "
        "set of images, in the format of the authors' ImageNet statistics file.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", nargs="+", help="image files or folders (searched recursively)")
    src.add_argument("--benchmark", help="use a benchmark's training split")
    src.add_argument(
        "--natural-crops",
        type=positive_int,
        metavar="N",
        help="N seeded crops of scikit-image's bundled photographs (images outside every benchmark)",
    )
    p.add_argument("--normal-class", type=int, help="with --benchmark: one class (default: all classes)")
    p.add_argument("--data-root", help="with --benchmark: dataset folder or archive")
    p.add_argument("--vgg-weights", default="imagenet", help="'imagenet', 'random' or a state-dict path")
    p.add_argument("--layer", default="relu4_2", help="deepest VGG ReLU layer (default relu4_2)")
    p.add_argument(
        "--image-size",
        type=bounded_int(1, MAX_IMAGE_SIZE, 32),
        default=32,
        help=f"with --images or --natural-crops: image size (default 32, at most {MAX_IMAGE_SIZE})",
    )
    _add_device(p)
    p.add_argument("--batch-size", type=batch_size, default=256, help="images per VGG forward pass (default 256)")
    p.add_argument("--output", required=True, help="statistics file to write (.pt)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_data(sub):
    p = sub.add_parser("data", help="inspect benchmark data")
    dsub = p.add_subparsers(dest="data_command", required=True)
    d = dsub.add_parser(
        "describe",
        help="source used and image counts per class",
        description="Print the source used and the train / test-normal / test-anomalous counts.",
    )
    d.add_argument("--benchmark", required=True, help="benchmark name, e.g. mnist, cifar10, coil100, digits")
    d.add_argument("--normal-class", type=int, help="one class (default: all)")
    d.add_argument("--data-root", help="dataset folder or archive (default: $PIAD_DATA, then download)")
    d.add_argument("--split-seed", type=int, default=0, help="seed of the random re-splits (default 0)")
    d.add_argument("--no-download", action="store_true", help="never download")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="piad", description="Perceptual Image Anomaly Detection (PIAD).")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_evaluate(sub)
    _add_score(sub)
    _add_feature_stats(sub)
    _add_data(sub)
    _add_curve(sub)
    _add_control(sub)
    _add_adopt(sub)
    _add_reproduce(sub)
    _add_book(sub)
    return parser


def cmd_train(a) -> int:
    from piad.errors import ConfigError
    from piad.run.config import make_config, parse_assignments
    from piad.run.training import train

    overrides = parse_assignments(a.set)
    flags = {
        "normal_class": ("--normal-class", a.normal_class),
        "run": ("--run", a.run),
        "iterations": ("--iterations", a.iterations),
        "seed": ("--seed", a.seed),
        "data_root": ("--data-root", a.data_root),
        "cache_features": ("--no-cache", False if a.no_cache else None),
    }
    for key, (flag, val) in flags.items():
        if val is None:
            continue
        if key in overrides:  # a key owned by a flag, given twice: honoured if the same, refused otherwise
            shown = flag if isinstance(val, bool) else f"{flag} {val}"
            if str(val).lower() != str(overrides[key]).strip().lower():
                raise ConfigError(
                    f"--set {key}={overrides[key]} contradicts {shown}: both set config key {key!r}; give it once."
                )
        overrides[key] = val
    cfg = make_config(a.benchmark, overrides, ablation=a.ablation)
    train(
        cfg,
        a.out,
        device=a.device,
        resume=a.resume,
        overwrite=a.overwrite,
        progress=not a.no_progress,
        channels_last=a.channels_last,
        bf16=a.bf16,
        cuda_graph=a.cuda_graph,
    )
    print(f"trained {cfg.iterations} iterations -> {a.out}")
    if a.evaluate:
        return cmd_evaluate(
            argparse.Namespace(out=a.out, device=a.device, data_root=None, channels_last=a.channels_last)
        )
    return 0


def cmd_evaluate(a) -> int:
    from piad.run.evaluation import evaluate

    data = None
    if a.data_root:
        from piad.data import load_for_config
        from piad.run.rundir import load_run_config

        cfg = load_run_config(a.out)
        cfg.data_root = a.data_root
        data = load_for_config(cfg)
    m = evaluate(a.out, device=a.device, data=data, channels_last=a.channels_last)
    print(
        f"ROC AUC = {m['roc_auc']:.4f}  ({m['benchmark']}, normal class {m['normal_class']}, "
        f"{m['n_test_normal']} normal vs {m['n_test_anomalous']} anomalous test images, distance {m['distance']})"
    )
    for g, v in m.get("roc_auc_per_group", {}).items():
        print(f"  {g}: {v:.4f}")
    src = m.get("perceptual_sources", {})
    if "vgg_weights" in src:
        print(
            f"perceptual network: {src['vgg_weights']}, layer {src.get('layer')}, feature statistics: "
            f"{src.get('feature_stats', 'n/a')}; data: {m.get('data_source')}"
        )
    return 0


def check_output_file(flag: str, path, overwrite: bool, inputs=()) -> Path:
    """Refuse, before any work, an output file that is a folder, whose folder is a file, that exists (without
    --overwrite) or that is one of the inputs (even with --overwrite)."""
    out = Path(path)
    if out.is_dir():
        raise PiadError(f"{flag} {str(out)!r} is a folder; give the path of the file to write.")
    for parent in out.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise PiadError(
                    f"{flag} {str(out)!r}: {str(parent)!r} is a file, not a folder; give a path inside a folder."
                )
            break
    if os.path.lexists(out):
        from piad.run.scoring import replaced_input

        if replaced_input(out, inputs) is not None:
            raise PiadError(f"{flag} {str(out)!r} is one of the input images; give another file name.")
        if not overwrite:
            raise PiadError(f"{flag} {str(out)!r} exists; pass --overwrite to replace it, or give another file name.")
    return out


def cmd_score(a) -> int:
    import math

    from piad.data import expand_paths
    from piad.run.rundir import diverged_status, run_of_checkpoint
    from piad.run.scoring import score_paths

    ckpt = Path(a.checkpoint)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoints" / "latest.pt"
    for p in a.paths:
        if not os.path.lexists(p):
            raise PiadError(f"IMAGE_OR_FOLDER {p!r} does not exist; check the path.")
    if a.csv:
        check_output_file("--csv", a.csv, a.overwrite, expand_paths(a.paths))
    rows, errors = score_paths(
        ckpt, a.paths, device=a.device, maps_dir=a.maps, batch_size=a.batch_size, overwrite=a.overwrite
    )
    for e in errors:
        print(f"skipped unreadable file: {e}", file=sys.stderr)
    run = run_of_checkpoint(ckpt)
    bad = diverged_status(run) if run is not None else None
    if bad is not None:
        print(
            f"warning: checkpoint {str(ckpt)!r} belongs to a run whose training diverged at iteration "
            f"{bad.get('iteration')} ({bad.get('what')}); its scores are not meaningful. Train the run again.",
            file=sys.stderr,
        )
    n_bad = sum(not math.isfinite(s) for _, s in rows)
    if n_bad:
        print(
            f"warning: {n_bad} of {len(rows)} scores are not finite: the model in {str(ckpt)!r} is broken "
            "(diverged); train it again.",
            file=sys.stderr,
        )
    if a.csv:
        import io

        from piad.run.rundir import atomic_write_text

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "score"])
        w.writerows((str(p), f"{s:.8g}") for p, s in rows)
        atomic_write_text(a.csv, buf.getvalue())
        print(f"wrote {len(rows)} scores to {a.csv}")
    else:
        for p, s in rows:
            print(f"{s:.6f}\t{p}")
    return 0 if rows or not errors else 2


def cmd_feature_stats(a) -> int:
    from piad.errors import ConfigError
    from piad.run.config import VGG_RELU_INDEX
    from piad.run.feature_stats import check_feature_memory, compute_feature_stats, save_feature_stats
    from piad.run.training import resolve_device

    if a.layer not in VGG_RELU_INDEX:
        raise ConfigError(f"--layer {a.layer!r} is not a VGG-19 ReLU layer: expected one of {tuple(VGG_RELU_INDEX)}.")
    out = check_output_file("--output", a.output, a.overwrite)
    device = resolve_device(a.device)
    if a.images:
        from piad.data import expand_paths, read_image_files

        for p in a.images:
            if not os.path.lexists(p):
                raise PiadError(f"--images {p!r} does not exist; check the path.")
        files = expand_paths(a.images)
        check_feature_memory(a.image_size, a.batch_size, a.layer, device)
        found: list = []

        def image_batches():  # read and decoded a batch at a time: memory bounded by --batch-size
            for i in range(0, len(files), a.batch_size):
                x, ok, errors = read_image_files(files[i : i + a.batch_size], a.image_size, 3)
                for e in errors:
                    print(f"skipped unreadable file: {e}", file=sys.stderr)
                found.extend(ok)
                if len(ok):
                    yield x

        batches, desc = image_batches(), lambda: f"{len(found)} images from {a.images}"
    elif a.natural_crops:
        from piad.data.natural import natural_crops

        check_feature_memory(a.image_size, a.batch_size, a.layer, device)
        crops = natural_crops(a.natural_crops, a.image_size, seed=0)
        batches = crops.split(a.batch_size)
        desc = lambda: f"{a.natural_crops} natural-image crops of {a.image_size} pixels"  # noqa: E731
    else:
        from piad.data import PROTOCOLS, import_protocols, load_benchmark

        import_protocols()
        if a.benchmark not in PROTOCOLS:
            raise ConfigError(f"--benchmark {a.benchmark!r} is unknown: expected one of {sorted(PROTOCOLS)}.")
        n_classes = PROTOCOLS[a.benchmark].num_classes
        if a.normal_class is not None and not 0 <= a.normal_class < n_classes:
            raise ConfigError(
                f"--normal-class {a.normal_class}: benchmark {a.benchmark!r} has classes 0..{n_classes - 1}."
            )
        classes = [a.normal_class] if a.normal_class is not None else range(n_classes)
        sets = [load_benchmark(a.benchmark, c, data_root=a.data_root).train for c in classes]
        if sets:
            check_feature_memory(sets[0].shape[-1], a.batch_size, a.layer, device)
        batches = (b for s in sets for b in s.split(a.batch_size))
        n = sum(len(s) for s in sets)
        desc = lambda: f"{a.benchmark} training split, classes {list(classes)}, {n} images"  # noqa: E731
    stats = compute_feature_stats(batches, a.vgg_weights, a.layer, device)
    save_feature_stats(out, stats)
    print(f"wrote statistics of {sorted(stats)} over {desc()} to {out}")
    return 0


def cmd_data(a) -> int:
    from piad.data import describe
    from piad.errors import ConfigError

    if not 0 <= a.split_seed <= 2**63 - 1:  # the range `piad train` accepts (config key split_seed)
        raise ConfigError(f"--split-seed {a.split_seed}: expected an integer in 0..{2**63 - 1}.")

    print(
        describe(
            a.benchmark, a.normal_class, data_root=a.data_root, split_seed=a.split_seed, download=not a.no_download
        )
    )
    return 0


def _add_curve(sub):
    p = sub.add_parser(
        "curve",
        help="learning curve: ROC AUC of a run's weight snapshots against iterations",
        description="Score every weight snapshot (checkpoints/iter_*.pt) of a run on the whole test "
        "split, f(x) computed once, and write DIR/curve.csv (iteration, roc_auc). For "
        "judging convergence only: the run's reported number stays its final iteration's. "
        "Each snapshot's ROC AUC is kept in DIR/curve.points.csv, so running it again "
        "(after an interruption, or while the run trains) scores only new snapshots.",
    )
    p.add_argument("--out", required=True, help="run directory written by `piad train`")
    p.add_argument("--every", type=int, help="only snapshots at multiples of this many iterations (default: all)")
    p.add_argument("--channels-last", action="store_true", help=SCORE_NHWC_HELP)
    _add_device(p)


def cmd_curve(a) -> int:
    from piad.run.curves import write_learning_curve
    from piad.run.rundir import load_run_config
    from piad.run.training import resolve_device

    if a.every is not None and a.every < 1:
        print(f"piad curve: --every {a.every}: expected a positive number of iterations.", file=sys.stderr)
        return 2
    out = Path(a.out)
    if not out.is_dir():
        what = "is a file" if out.exists() else "does not exist"
        raise PiadError(f"--out {str(out)!r} {what}; give the run directory written by `piad train --out DIR`.")
    load_run_config(out)  # a folder that is not a run: said so, not "train the run first"
    curve = write_learning_curve(out, resolve_device(a.device), a.every, channels_last=a.channels_last)
    for it, auc in curve:
        print(f"{it}\t{auc:.4f}" if auc == auc else f"{it}\tnan (diverged: the snapshot's scores are not finite)")
    n_bad = sum(auc != auc for _, auc in curve)
    if n_bad:
        print(f"warning: {n_bad} of {len(curve)} snapshots diverged (ROC AUC nan in curve.csv).", file=sys.stderr)
    print(f"wrote {len(curve)} points to {out / 'curve.csv'}")
    return 0


def _add_control(sub):
    p = sub.add_parser(
        "control",
        help="training-free controls: the run's distance to the mean normal image and to the nearest normal image",
        description="For every finished run under RESULTS (one per experiment and normal class), score its test "
        "split without training: by d(x, mean normal training image) and by the distance to the nearest normal "
        "training image, with the run's own distance, VGG weights, layer, statistics and data. Writes "
        "RESULTS/controls/<experiment>/<class>/{mean_image,nearest}/ (metrics.json, scores.npz) and provenance.json; "
        "complete controls are kept.",
    )
    p.add_argument("--results-dir", required=True, help="a results folder, e.g. results/offline")
    p.add_argument("--benchmarks", nargs="+", help="only these benchmarks or experiment folders")
    p.add_argument("--classes", nargs="+", type=int, help="only these normal classes")
    p.add_argument(
        "--n-reference",
        type=int,
        default=1000,
        help="normal training images the nearest-neighbour control searches (seeded subset; 0: all)",
    )
    p.add_argument(
        "--candidates", type=int, default=16, help="L2-closest candidates re-ranked by the distance itself (default 16)"
    )
    p.add_argument(
        "--feature-stats",
        help="score with this statistics file instead of each run's own (to measure what the statistics change); "
        "requires --folder",
    )
    p.add_argument("--folder", default="controls", help="subfolder of RESULTS to write (default controls)")
    p.add_argument("--no-ablation", action="store_true", help="leave out the ablation experiments")
    p.add_argument("--overwrite", action="store_true", help="compute complete controls again")
    _add_device(p)


def cmd_control(a) -> int:
    from piad.experiments.controls import run_controls
    from piad.run.controls import ControlSettings

    if not Path(a.results_dir).is_dir():
        print(
            f"piad control: --results-dir {a.results_dir!r} is not a folder: give a results folder such as "
            "results/offline.",
            file=sys.stderr,
        )
        return 2
    try:
        settings = ControlSettings(n_reference=a.n_reference, candidates=a.candidates)
    except ValueError:
        print("piad control: --n-reference must be >= 0 and --candidates >= 1.", file=sys.stderr)
        return 2
    if a.feature_stats and a.folder == "controls":
        print(
            "piad control: --feature-stats needs --folder (e.g. controls-natural-stats), so that the controls "
            "with each run's own statistics are kept.",
            file=sys.stderr,
        )
        return 2
    if a.feature_stats and not Path(a.feature_stats).is_file():
        print(f"piad control: --feature-stats {a.feature_stats!r} is not a file.", file=sys.stderr)
        return 2
    overrides = {"feature_stats": str(Path(a.feature_stats).resolve())} if a.feature_stats else None
    run_controls(
        a.results_dir,
        a.benchmarks,
        a.classes,
        settings,
        a.device,
        a.overwrite,
        overrides=overrides,
        folder=a.folder,
        ablation=not a.no_ablation,
    )
    return 0


def _add_adopt(sub):
    p = sub.add_parser(
        "adopt",
        help="put re-executed runs in place of the committed runs they repeat (same config and seed)",
        description="For every finished run SOURCE/<experiment>/<class>/<run>/ (trained again with the same config "
        "and seed, e.g. to keep its per-image scores), move the committed run RESULTS/<experiment>/<class>/<run>/ to "
        "RESULTS/<experiment>-earlier/<class>/<run>/ and copy the re-execution in its place. Every run is checked "
        "first (a finished committed run, the same config, the feature statistics aside where the run's distance reads "
        "none, no earlier execution kept yet); nothing moves unless all "
        "pass. The tables then use the re-execution; the results page compares the two executions.",
    )
    p.add_argument("source", metavar="SOURCE", help="the re-execution's results folder, e.g. ../rerun/offline")
    p.add_argument("--results-dir", required=True, help="the committed results folder, e.g. results/offline")


def cmd_adopt(a) -> int:
    from piad.experiments.reexecution import adopt_reexecutions

    adopt_reexecutions(a.source, a.results_dir)
    return 0


def _add_reproduce(sub):
    p = sub.add_parser(
        "reproduce",
        help="run a profile's experiment grid through the notebooks",
        description="Execute notebooks/train_evaluate.ipynb with papermill for every (benchmark, class, "
        "run) of a profile into results/<profile>/<benchmark>/<class>/<run>/, skipping "
        "finished runs and resuming interrupted ones; then the summary notebooks.",
    )
    p.add_argument(
        "--profile",
        choices=PROFILES,
        required=True,
        help="smoke (CI, seconds), offline (substitute data/weights on CPU), paper (the paper's setting)",
    )
    p.add_argument(
        "--benchmarks", nargs="+", help="only these benchmarks (or experiment folders, e.g. cifar10-ablation-l2)"
    )
    p.add_argument(
        "--no-ablation",
        action="store_true",
        help="leave out the ablation experiments (a benchmark name in --benchmarks selects them too)",
    )
    p.add_argument("--classes", nargs="+", type=int, help="only these normal classes")
    p.add_argument("--runs", nargs="+", type=int, help="only these run numbers")
    _add_device(p, threads=False)
    p.add_argument("--jobs", type=int, default=1, help="runs executed in parallel (default 1)")
    p.add_argument(
        "--ensemble",
        type=int,
        metavar="K",
        help="train up to K runs of an experiment together as a batched ensemble before their notebooks "
        "evaluate them (default on a CUDA device: as many as fit in its free memory, measured, up to 40; none "
        "elsewhere; 1 disables)",
    )
    p.add_argument("--iterations", type=int, help="training iterations (default: the profile's)")
    p.add_argument("--results-dir", help="default: <repo>/results/<profile>")
    p.add_argument("--work-dir", help="checkpoints and full run folders (default: <repo>/runs/<profile>)")
    p.add_argument("--summaries-only", action="store_true", help="only re-execute the summary notebooks")
    p.add_argument("--no-summaries", action="store_true", help="do not execute the summary notebooks")
    p.add_argument("--refresh-perceptual", action="store_true", help="re-execute perceptual_metric.ipynb")
    p.add_argument(
        "--no-controls",
        action="store_true",
        help="do not compute missing training-free controls before the summaries (`piad control` computes them)",
    )
    p.add_argument("--dry-run", action="store_true", help="list the runs that would be executed")
    p.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: this machine, --jobs at a time (default); slurm: one submitit job per ensemble group "
        "of runs, requeued on preemption or time-out and resumed from its last checkpoint",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="report from the run folders which runs are finished, running, failed (with the error), "
        "interrupted (a checkpoint to resume) or missing; trains nothing",
    )
    g = p.add_argument_group('cluster (with --executor slurm; needs `pip install "piad[cluster]"`)')
    g.add_argument("--partition", help="Slurm partition (default: the cluster's default)")
    g.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per job (default 1; a job trains on one device)")
    g.add_argument("--cpus-per-job", type=int, default=8, help="CPU cores per job (default 8)")
    g.add_argument("--mem-gb", type=float, help="memory per job in GB (default: the partition's)")
    g.add_argument(
        "--time-limit",
        type=int,
        default=24 * 60,
        metavar="MINUTES",
        help="time limit per job in minutes (default 1440); a job that reaches it is requeued and resumes",
    )
    g.add_argument("--array-parallelism", type=int, default=64, help="jobs of the array running at once (default 64)")
    g.add_argument(
        "--max-timeouts",
        type=int,
        default=20,
        help="requeues after time-outs before a job gives up (default 20; preemptions do not count)",
    )
    g.add_argument(
        "--slurm-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sbatch parameter, repeatable, e.g. --slurm-param account=proj --slurm-param qos=high",
    )
    g.add_argument(
        "--slurm-setup",
        action="append",
        default=[],
        metavar="COMMAND",
        help="shell line run before each job, repeatable, e.g. --slurm-setup 'module load cuda'",
    )
    g.add_argument(
        "--no-wait",
        action="store_true",
        help="submit and return; run the command again (or with --summaries-only) once --status reports "
        "every run finished, to execute the summary notebooks",
    )


def cluster_options(a):
    """piad.experiments.cluster.ClusterOptions from `piad reproduce`'s flags; a bad value: ConfigError naming it."""
    import math
    import re

    from piad.errors import ConfigError
    from piad.experiments.cluster import ClusterOptions

    params = {}
    for item in a.slurm_param:
        key, sep, value = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key.strip()) or not value.strip():
            raise ConfigError(
                f"--slurm-param {item!r}: expected KEY=VALUE (an sbatch option without its dashes), "
                "e.g. --slurm-param account=myproject"
            )
        if "\n" in value or "\r" in value:
            raise ConfigError(f"--slurm-param {key}: the value spans several lines; give it on one line.")
        params[key.strip().replace("-", "_")] = value.strip()
    for line in a.slurm_setup:
        if not line.strip() or "\n" in line or "\r" in line:
            raise ConfigError(
                f"--slurm-setup {line!r}: expected one non-empty shell line (repeat the flag for several), "
                "e.g. --slurm-setup 'module load cuda'"
            )
    if a.partition is not None and not re.fullmatch(r"[A-Za-z0-9_.,-]+", a.partition):
        raise ConfigError(
            f"--partition {a.partition!r}: expected a Slurm partition name (sinfo lists them), "
            "or leave the flag out for the cluster's default."
        )
    if a.mem_gb is not None and not (math.isfinite(a.mem_gb) and a.mem_gb > 0):
        raise ConfigError(f"--mem-gb {a.mem_gb}: expected a positive number of GB, e.g. --mem-gb 32.")
    for flag, value, low in (
        ("--jobs", a.jobs, 1),
        ("--gpus-per-job", a.gpus_per_job, 0),
        ("--cpus-per-job", a.cpus_per_job, 1),
        ("--time-limit", a.time_limit, 1),
        ("--array-parallelism", a.array_parallelism, 1),
        ("--max-timeouts", a.max_timeouts, 0),
    ):
        if value < low:
            raise ConfigError(f"{flag} {value}: expected an integer of at least {low}.")
    return ClusterOptions(
        partition=a.partition,
        gpus_per_job=a.gpus_per_job,
        cpus_per_job=a.cpus_per_job,
        mem_gb=a.mem_gb,
        time_limit_min=a.time_limit,
        array_parallelism=a.array_parallelism,
        max_timeouts=a.max_timeouts,
        slurm_params=params,
        setup=list(a.slurm_setup),
        wait=not a.no_wait,
    )


def cmd_reproduce(a) -> int:
    from piad.experiments.reproduce import reproduce

    return reproduce(
        a.profile,
        a.benchmarks,
        a.classes,
        a.runs,
        a.device,
        a.jobs,
        a.iterations,
        a.results_dir,
        a.work_dir,
        summaries=not a.no_summaries,
        summaries_only=a.summaries_only,
        refresh_perceptual=a.refresh_perceptual,
        dry_run=a.dry_run,
        ensemble=a.ensemble,
        log=log_line,
        executor=a.executor,
        cluster=cluster_options(a),
        status=a.status,
        ablation=not a.no_ablation,
        controls=not a.no_controls,
    )


def _add_book(sub):
    b = sub.add_parser(
        "book",
        help="build the Jupyter Book (HTML in _build/html)",
        description="Build the book from the committed results with `jupyter-book build`; it never "
        "trains, unless --run asks to run a profile first.",
    )
    b.add_argument("--profile", choices=PROFILES, help="with --run: the profile to run before building")
    b.add_argument("--run", action="store_true", help="run `piad reproduce --profile P` before building")
    b.add_argument("--jobs", type=int, default=1, help="with --run: parallel runs")
    b.add_argument("--device", default="auto", help="with --run: device")
    b.add_argument("--path-output", help="build folder (default: the repository, i.e. _build/html)")
    b.add_argument("-W", "--warningiserror", action="store_true", help="treat warnings as errors (as CI does)")
    b.add_argument("--keep-going", action="store_true", help="with -W: report every warning before failing")
    b.add_argument("--all", action="store_true", help="rebuild every page (jupyter-book build --all)")
    b.add_argument(
        "--repository",
        metavar="URL",
        help="set _config.yml's repository.url (launch buttons, repository button) and every notebook's install "
        "cell to URL before building (default: $PIAD_REPOSITORY_URL, which the book workflow sets)",
    )


def cmd_book(a) -> int:
    import os

    from piad.book import REPOSITORY_ENV, build_book, set_repository

    repository = a.repository or os.environ.get(REPOSITORY_ENV)
    if repository:  # before --run, so that the executed notebooks carry it too
        try:
            for path in set_repository(repository):
                print(f"piad book: repository set to {repository.rstrip('/')} in {path.name}", flush=True)
        except ValueError as e:
            print(f"piad book: {e}", file=sys.stderr)
            return 2
    if a.run:
        if not a.profile:
            print("piad book: --run needs --profile", file=sys.stderr)
            return 2
        from piad.experiments.reproduce import reproduce

        rc = reproduce(a.profile, device=a.device, jobs=a.jobs, log=log_line)
        if rc != 0:
            return rc
    return build_book(
        path_output=a.path_output,
        warningiserror=a.warningiserror,
        keep_going=a.keep_going,
        all_pages=a.all,
        repository=repository,
    )


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "score": cmd_score,
    "feature-stats": cmd_feature_stats,
    "data": cmd_data,
    "curve": cmd_curve,
    "control": cmd_control,
    "adopt": cmd_adopt,
    "reproduce": cmd_reproduce,
    "book": cmd_book,
}


class Terminated(BaseException):
    """SIGTERM outside the fit loop (which checkpoints first): unwinds like Ctrl-C, so locks and partial files are
    cleaned up on the way out."""


def _terminate(signum, frame):
    raise Terminated(signum)


def max_threads() -> int:
    """The most CPU threads `--threads` accepts: the machine's logical CPUs (more only slows torch down, and huge
    counts exhaust memory)."""
    return os.cpu_count() or 1


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if getattr(a, "threads", None) is not None:
        if not 1 <= a.threads <= max_threads():
            print(
                f"piad {a.command}: --threads {a.threads}: expected a number of CPU threads from 1 to "
                f"{max_threads()} (this machine's logical CPUs), e.g. the number of free cores.",
                file=sys.stderr,
            )
            return 2
        import torch

        torch.set_num_threads(a.threads)
    old_term = None
    # SIGTERM unwinds the single-process commands like Ctrl-C (locks released, partial files removed); reproduce and
    # book keep the default (they wait on worker processes, which an exception would wait for)
    own = a.command not in ("reproduce", "book")
    if (
        own
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    ):
        old_term = signal.signal(signal.SIGTERM, _terminate)
    try:
        return COMMANDS[a.command](a)
    except PiadError as e:
        print(f"piad {a.command}: {e}", file=sys.stderr)
        return e.exit_code
    except (KeyboardInterrupt, Terminated) as e:
        what = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C (SIGINT)"
        print(f"piad {a.command}: interrupted by {what}; run the command again to do the work.", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (e.g. `| head`): nothing left to tell
        return 1
    except OSError as e:  # an I/O fault no layer below mapped: still one line, naming the file
        err = os_error(e, action="read or write")
        print(f"piad {a.command}: {err}", file=sys.stderr)
        return err.exit_code
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):
            raise
        print(
            f"piad {a.command}: out of memory ({short_message(e)}). Lower the sizes (batch_size, image size, "
            "widths, --batch-size) or use a device with more memory.",
            file=sys.stderr,
        )
        return 1
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def out_of_memory(e: BaseException) -> bool:
    """An allocation failure of Python or torch (CPU or CUDA)."""
    text = str(e).lower()
    return isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or "allocate" in text


def short_message(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."


if __name__ == "__main__":
    sys.exit(main())
