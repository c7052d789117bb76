"""Evaluation: anomaly score = d(x, G(E(x))) with the configured distance; ROC AUC
(book: Method > Anomaly score and evaluation, spec-anomaly-score, spec-evaluation).

Final weights only: no checkpoint selection with test data.
"""

from __future__ import annotations

import csv
import io
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from piad.data import OneClassData, load_for_config
from piad.errors import CheckpointError, RunDirectoryError, divergence_advice
from piad.model.networks import Encoder, Generator
from piad.model.perceptual import PerceptualDistance
from piad.paths import sanitise_text
from piad.run.checkpoint import check_config, load_checkpoint, short_error
from piad.run.config import ExperimentConfig, config_from_dict
from piad.run.distance import make_distance
from piad.run.rundir import (
    METRICS,
    SCORES,
    RunLock,
    atomic_write_json,
    atomic_write_text,
    diverged_status,
    keep_curve_points,
    latest_checkpoint,
    load_run_config,
    run_of_checkpoint,
    snapshot_path,
    snapshot_stamp,
)
from piad.run.scorefile import SCORES_NPZ, save_scores
from piad.run.training import resolve_device


class AnomalyScorer(torch.nn.Module):
    """E, G and the distance of a trained run: `scorer(x)` -> anomaly scores [B]."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        encoder: Encoder,
        generator: Generator,
        distance: PerceptualDistance,
        map_scale: dict | None = None,
    ):
        super().__init__()
        self.cfg, self.encoder, self.generator, self.distance = cfg, encoder, generator, distance
        self.map_scale = map_scale  # the anomaly maps' colour scale stored in the checkpoint (None: older one)
        self.memory_format = torch.contiguous_format

    def use_channels_last(self) -> AnomalyScorer:
        """Score in the NHWC memory layout: the same math with other float rounding, faster convolutions on a CPU
        (book: Performance). Returns self."""
        self.memory_format = torch.channels_last
        return self.to(memory_format=torch.channels_last)

    def _batch(self, b: torch.Tensor) -> torch.Tensor:
        return b.to(next(self.encoder.parameters()).device).contiguous(memory_format=self.memory_format)

    @classmethod
    def from_checkpoint(
        cls,
        path,
        device="cpu",
        distance: PerceptualDistance | None = None,
        require_iteration: int | None = None,
        expected_config: ExperimentConfig | None = None,
    ) -> AnomalyScorer:
        """E and G of a checkpoint. `expected_config`: the run's config, which the checkpoint must have been
        written by (keys that only change the schedule or the data location may differ)."""
        state = load_checkpoint(path)
        if expected_config is not None:
            check_config(path, state, expected_config.to_dict())
        cfg = config_from_dict(json.loads(state["config"]))
        if require_iteration is not None and int(state["iteration"]) != require_iteration:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is at iteration {int(state['iteration'])}, but the run "
                f"is configured for {require_iteration}: the run is unfinished. Resume it with "
                "`piad train ... --resume` before evaluating."
            )
        dev = resolve_device(device)
        enc = Encoder(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.e_widths)
        gen = Generator(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.latent_size, cfg.g_widths)
        try:
            enc.load_state_dict(state["networks"]["encoder"])
            gen.load_state_dict(state["networks"]["generator"])
        except (KeyError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match its own config ({short_error(e)}); the "
                "file was altered or is not from `piad train`. Use another checkpoint."
            ) from None
        dist = distance if distance is not None else make_distance(cfg, cfg.resolved_seed())
        return cls(cfg, enc, gen, dist, state.get("map_scale")).to(dev).eval()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.distance(x, self.generator(self.encoder(x)))

    @torch.no_grad()
    def score(self, images: torch.Tensor, batch_size: int = 256, features: torch.Tensor | None = None) -> torch.Tensor:
        """Scores [N] on the CPU. `features`: f(images) from :meth:`features` (e.g. shared by several checkpoints
        with the same distance), so that only the reconstructions go through the VGG."""
        dev = next(self.encoder.parameters()).device
        if features is None:
            return torch.cat([self(self._batch(b)).float().cpu() for b in images.split(batch_size)])
        if features.shape[0] != images.shape[0]:
            raise ValueError(
                f"features has {features.shape[0]} rows for {images.shape[0]} images: compute it with "
                "AnomalyScorer.features(images)."
            )
        return torch.cat(
            [
                self.distance.from_features(f.to(dev), self.generator(self.encoder(self._batch(b)))).float().cpu()
                for b, f in zip(images.split(batch_size), features.split(batch_size), strict=True)
            ]
        )

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """f(x) of the distance for every image, on the scorer's device (the cacheable half of a score)."""
        return torch.cat([self.distance.features(self._batch(b)) for b in images.split(batch_size)])

    @torch.no_grad()
    def anomaly_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.distance.anomaly_map(x, self.generator(self.encoder(x)))

    def map_scale_top(self) -> float:
        """The value drawn in the top colour of anomaly maps, fixed by the model (piad.run.training.anomaly_map_scale):
        stored in the checkpoint, else (checkpoints of older versions) computed from the run's training images."""
        if self.map_scale is None:
            from piad.errors import DataError
            from piad.run.training import MAP_SCALE_IMAGES, anomaly_map_scale

            try:
                train_x = load_for_config(self.cfg).train
            except DataError as e:
                raise DataError(
                    f"this checkpoint stores no anomaly-map colour scale (it predates it) and its "
                    f"training images could not be loaded to compute one: {e}"
                ) from None
            dev = next(self.encoder.parameters()).device
            self.map_scale = anomaly_map_scale(
                lambda b: self.generator(self.encoder(b)), self.distance, train_x[:MAP_SCALE_IMAGES].to(dev)
            )
        hi = float(self.map_scale["hi"])
        return hi if hi > 0 and np.isfinite(hi) else 1.0


def roc_auc(scores, labels) -> float:
    """ROC AUC with anomalies (label 1) as the positive class; higher score = more anomalous."""
    labels = np.asarray(labels)
    if labels.min() == labels.max():
        raise ValueError("ROC AUC needs both normal and anomalous test images")
    scores = np.asarray(scores, dtype=np.float64)
    if not np.isfinite(scores).all():  # a diverged model: no ranking to measure (NaN marks it)
        return float("nan")
    return float(roc_auc_score(labels, scores))


def metrics_from_scores(scores: torch.Tensor, data: OneClassData) -> dict:
    labels = data.test_labels.numpy()
    scores_np = scores.numpy().astype(np.float64)
    if not np.isfinite(scores_np).all():
        raise RunDirectoryError("anomaly scores contain non-finite values: the model diverged; retrain it.")
    out = {
        "roc_auc": roc_auc(scores_np, labels),
        **data.counts(),
        "n_test_normal": int((labels == 0).sum()),
        "n_test_anomalous": int((labels == 1).sum()),
    }
    if data.test_groups is not None:
        groups = np.asarray(data.test_groups)
        per_group = {}
        for g in sorted(set(groups[labels == 1])):
            sel = (labels == 0) | (groups == g)
            per_group[g] = roc_auc(scores_np[sel], labels[sel])
        if len(per_group) > 1:
            out["roc_auc_per_group"] = per_group
    return out


def evaluate(
    out_dir, device="cpu", data: OneClassData | None = None, batch_size: int = 256, channels_last: bool = False
) -> dict:
    """Score the test split with the run's final weights; write metrics.json, scores.csv and scores.npz; return the
    metrics.

    Refuses a diverged run and a checkpoint written by another config than the run's. `channels_last`: score in the
    NHWC memory layout (AnomalyScorer.use_channels_last)."""
    out = Path(out_dir)
    cfg = load_run_config(out)
    bad = diverged_status(out)
    if bad is not None:
        raise RunDirectoryError(
            f"run {str(out)!r} diverged at iteration {bad.get('iteration')} "
            f"({bad.get('what')}) and has no final weights to evaluate; resuming it repeats the "
            f"divergence. Train it again with --overwrite and {divergence_advice()}."
        )
    t0 = time.perf_counter()
    with RunLock(out):
        scorer = AnomalyScorer.from_checkpoint(
            latest_checkpoint(out), device, require_iteration=cfg.iterations, expected_config=cfg
        )
        if channels_last:
            scorer.use_channels_last()
        own_data = data is None
        data = data if data is not None else load_for_config(cfg)
        scores = scorer.score(data.test, batch_size)
        metrics = metrics_from_scores(scores, data)
        metrics.update(
            {
                "status": "ok",
                "benchmark": cfg.benchmark,
                "normal_class": cfg.normal_class,
                "run": cfg.run,
                "iterations": cfg.iterations,
                "distance": cfg.distance,
                # where data and weights came from, without this machine's paths (piad.paths)
                "data_source": sanitise_text(data.source),
                "perceptual_sources": {k: sanitise_text(str(v)) for k, v in scorer.distance.sources.items()},
                "device": str(scorer_device(scorer)),
                "scoring_memory_layout": layout_name(scorer),
                "torch": torch.__version__,
                "python": platform.python_version(),
                "eval_seconds": round(time.perf_counter() - t0, 3),
            }
        )
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["index", "label", "group", "score"])
        groups = data.test_groups or [""] * len(scores)
        for i, (lab, grp, s) in enumerate(zip(data.test_labels.tolist(), groups, scores.tolist(), strict=True)):
            w.writerow([i, lab, grp, f"{s:.8g}"])
        atomic_write_text(out / SCORES, buf.getvalue())
        save_scores(out / SCORES_NPZ, data.test_labels.numpy(), scores.numpy(), data.test_groups)
        atomic_write_json(out / METRICS, metrics)
        final = snapshot_path(out, cfg.iterations)
        if own_data and final.is_file():
            # the final snapshot holds the weights just scored (written with latest.pt at the last iteration): its
            # learning-curve point is this ROC AUC, so the curve need not score it again (piad.run.curves)
            keep_curve_points(out, {cfg.iterations: (metrics["roc_auc"], snapshot_stamp(final))})
    return metrics


def score_checkpoints(
    checkpoints, images: torch.Tensor, device="cpu", batch_size: int = 256, on_scored=None, channels_last: bool = False
) -> dict[str, torch.Tensor]:
    """Scores of `images` under each checkpoint (e.g. a run's iter_*.pt snapshots, or runs with other distances).

    f(images) is computed once per distinct distance (kind, VGG weights, layer, statistics) and shared, so each
    further checkpoint costs only E, G and the VGG of its reconstructions. Snapshots are for learning curves:
    choosing a checkpoint by test ROC AUC is model selection on the test set (book: spec-final-weights).
    `on_scored(path, scores)` is called after each checkpoint (e.g. to keep progress across an interruption).
    `channels_last`: score in the NHWC memory layout (AnomalyScorer.use_channels_last).
    """
    cache: dict[str, torch.Tensor] = {}
    out = {}
    for path in checkpoints:
        run = run_of_checkpoint(path)
        scorer = AnomalyScorer.from_checkpoint(
            path, device, expected_config=load_run_config(run) if run is not None else None
        )
        if channels_last:
            scorer.use_channels_last()
        c = scorer.cfg
        key = json.dumps(
            [
                c.distance,
                c.vgg_weights,
                c.layer,
                c.feature_stats,
                c.resolved_seed() if c.vgg_weights == "random" else None,
            ]
        )
        if key not in cache:
            cache[key] = scorer.features(images, batch_size)
        out[str(path)] = scorer.score(images, batch_size, features=cache[key])
        if on_scored is not None:
            on_scored(path, out[str(path)])
    return out


def scorer_device(scorer: AnomalyScorer) -> torch.device:
    return next(scorer.encoder.parameters()).device


def layout_name(scorer: AnomalyScorer) -> str:
    return "channels_last" if scorer.memory_format == torch.channels_last else "NCHW"
