"""Typed experiment configs: one dataclass per benchmark with the paper's defaults
(book: Method > Model, spec-architecture-table; Method > Training, spec-optimisation).

Overrides come from the CLI (`--set key=value`, strings parsed by the field's type), papermill or a dict; unknown keys,
wrong types and out-of-range values raise :class:`ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from typing import Any

from piad.errors import ConfigError
from piad.model.vgg import DISTANCES, VGG_RELU_INDEX

WEIGHT_POLICIES = ("gradient_normalizing", "manual")
MAX_N_DIS = 100  # critic steps per iteration: more only makes an iteration endless (the paper uses 2 or 3)


@dataclass
class ExperimentConfig:
    """One PIAD experiment. Defaults are the MNIST ones; subclasses carry each benchmark's paper defaults."""

    benchmark: str = "mnist"
    normal_class: int = 0
    run: int = 0
    seed: int | None = None  # None -> derived from (normal_class, run), see `resolved_seed`
    split_seed: int = 0  # random train/test re-splits (Fashion-MNIST, COIL-100)
    data_root: str | None = None
    download: bool = True
    # architecture (book: Method > Model, spec-architecture-table)
    image_size: int = 32
    channels: int = 1
    latent_dim: int = 32
    latent_size: int = 1  # spatial size of the latent; 4 for LSUN
    g_widths: tuple[int, ...] = (32, 32, 32, 32)
    e_widths: tuple[int, ...] = (32, 32, 32, 32)
    dx_widths: tuple[int, ...] = (32, 32, 32, 32)
    dz_hidden: tuple[int, ...] = (128, 128)
    # optimisation
    iterations: int = 50_000
    n_dis: int = 2
    batch_size: int = 32
    lr_eg: float = 1e-4
    lr_d: float = 5e-4
    beta1: float = 0.5
    beta2: float = 0.99
    weight_decay: float = 1e-8
    gp_weight: float = 10.0
    eps_drift: float = 0.001
    # reconstruction distance (book: Method > Relative-perceptual-L1, spec-rpl1)
    distance: str = "relative_perceptual_l1"
    vgg_weights: str = "imagenet"  # "imagenet" | "random" | path to a torchvision vgg19 state dict
    feature_stats: str | None = "imagenet"  # "imagenet" | path | None
    layer: str = "relu4_2"
    # loss weights (book: Method > Weight policy, spec-weight-policy)
    weight_policy: str = "gradient_normalizing"
    lambda_e: float = 10.0  # used only with weight_policy="manual"
    lambda_g: float = 100.0
    policy_every: int = 100
    policy_history: int = 200
    policy_ema: float = 0.05
    # bookkeeping
    checkpoint_every: int = 5_000
    log_every: int = 100
    sample_every: int = 5_000
    cache_features: bool = True  # precompute f(x) of the training images once (identical math, faster)

    # -- derived -------------------------------------------------------------------------------------------
    def resolved_seed(self) -> int:
        return self.seed if self.seed is not None else 1000 * int(self.normal_class) + int(self.run)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    def to_json(self) -> str:
        return json.dumps({"config_class": type(self).__name__, **self.to_dict()}, indent=2, sort_keys=True)

    def with_absolute_paths(self) -> ExperimentConfig:
        """A copy whose file paths (data_root, vgg_weights, feature_stats; named choices stay) are absolute, so that
        a run directory works from any working directory."""
        named = {"data_root": (), "vgg_weights": ("imagenet", "random"), "feature_stats": ("imagenet", "none")}
        changes = {
            k: os.path.abspath(os.path.expanduser(v))
            for k, keep in named.items()
            if (v := getattr(self, k)) not in (None, "") and v not in keep
        }
        return dataclasses.replace(self, **changes)

    def validate(self) -> ExperimentConfig:
        """Check ranges and consistency; raise ConfigError naming the offending key."""

        def bad(key, allowed):
            raise ConfigError(f"config key {key!r} = {getattr(self, key)!r} is not allowed: expected {allowed}.")

        for key in (
            "iterations",
            "n_dis",
            "latent_dim",
            "policy_every",
            "policy_history",
            "checkpoint_every",
            "log_every",
            "sample_every",
        ):
            if getattr(self, key) < 1:
                bad(key, "an integer >= 1")
        if self.n_dis > MAX_N_DIS:
            bad("n_dis", f"an integer from 1 to {MAX_N_DIS} (critic steps per iteration; the paper uses 2 or 3)")
        if self.batch_size < 2:
            bad("batch_size", "an integer >= 2 (the minibatch-stddev layer needs two samples)")
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                bad(f.name, "a finite number")
        # a learning rate of 0 trains nothing; a weight of L_rec of 0 switches the reconstruction off
        for key in ("lr_eg", "lr_d", "lambda_e", "lambda_g"):
            if not getattr(self, key) > 0:
                bad(key, "a finite number > 0")
        for key in ("gp_weight", "weight_decay", "eps_drift"):
            if not getattr(self, key) >= 0:
                bad(key, "a finite number >= 0")
        for key, hi in (("seed", 2**63 - 8), ("split_seed", 2**63 - 1)):
            if getattr(self, key) is not None and not 0 <= getattr(self, key) <= hi:
                bad(key, f"an integer in 0..{hi}")
        if not 0 < self.policy_ema <= 1:
            bad("policy_ema", "a number in (0, 1]")
        for key in ("beta1", "beta2"):
            if not 0 <= getattr(self, key) < 1:
                bad(key, "a number in [0, 1)")
        if self.normal_class < 0:
            bad("normal_class", "an integer >= 0 (a class index of the benchmark)")
        if self.run < 0:
            bad("run", "an integer >= 0")
        if self.channels not in (1, 3):
            bad("channels", "1 or 3")
        for key in ("image_size", "latent_size"):
            v = getattr(self, key)
            if v < 1 or v & (v - 1):
                bad(key, "a power of two")
        if self.image_size < 4 or self.image_size < self.latent_size:
            bad("image_size", f"a power of two >= max(4, latent_size={self.latent_size})")
        n_widths = int(math.log2(self.image_size * 2 / max(self.latent_size, 4)))
        for key in ("g_widths", "e_widths", "dx_widths"):
            w = getattr(self, key)
            if len(w) != n_widths or min(w) < 1:
                bad(key, f"{n_widths} positive widths for image_size={self.image_size}, latent_size={self.latent_size}")
        if len(self.dx_widths) != int(math.log2(self.image_size * 2 / 4)):
            bad("dx_widths", f"{int(math.log2(self.image_size / 2))} widths")
        if not self.dz_hidden or min(self.dz_hidden) < 1:
            bad("dz_hidden", "one or more positive widths")
        if self.distance not in DISTANCES:
            bad("distance", f"one of {DISTANCES}")
        if self.layer not in VGG_RELU_INDEX:
            bad("layer", f"a VGG-19 ReLU layer name, one of {tuple(VGG_RELU_INDEX)}")
        if self.weight_policy not in WEIGHT_POLICIES:
            bad("weight_policy", f"one of {WEIGHT_POLICIES}")
        if not self.vgg_weights:
            bad("vgg_weights", "'imagenet', 'random' or a path to a torchvision vgg19 state-dict file")
        return self


@dataclass
class DigitsConfig(ExperimentConfig):
    """scikit-learn's 8x8 digits upsampled to 32x32: the always-available offline benchmark (MNIST architecture)."""

    benchmark: str = "digits"
    iterations: int = 2_000
    checkpoint_every: int = 500
    sample_every: int = 500


@dataclass
class SyntheticConfig(ExperimentConfig):
    """Generated images for tests: tiny networks, a few iterations."""

    benchmark: str = "synthetic"
    image_size: int = 16
    latent_dim: int = 8
    g_widths: tuple[int, ...] = (8, 8, 8)
    e_widths: tuple[int, ...] = (8, 8, 8)
    dx_widths: tuple[int, ...] = (8, 8, 8)
    dz_hidden: tuple[int, ...] = (16, 16)
    iterations: int = 20
    batch_size: int = 8
    vgg_weights: str = "random"
    feature_stats: str | None = None
    layer: str = "relu2_1"
    policy_every: int = 5
    checkpoint_every: int = 10
    log_every: int = 5
    sample_every: int = 10


@dataclass
class MNISTConfig(ExperimentConfig):
    benchmark: str = "mnist"


@dataclass
class FashionMNISTConfig(ExperimentConfig):
    benchmark: str = "fashion_mnist"


@dataclass
class CIFAR10Config(ExperimentConfig):
    benchmark: str = "cifar10"
    channels: int = 3
    latent_dim: int = 256
    g_widths: tuple[int, ...] = (256, 256, 128, 64)
    e_widths: tuple[int, ...] = (64, 128, 256, 256)
    dx_widths: tuple[int, ...] = (32, 64, 128, 128)
    dz_hidden: tuple[int, ...] = (1024, 1024)
    iterations: int = 100_000
    checkpoint_every: int = 10_000


@dataclass
class COIL100Config(ExperimentConfig):
    benchmark: str = "coil100"
    channels: int = 3
    iterations: int = 20_000
    checkpoint_every: int = 5_000


@dataclass
class CelebAConfig(ExperimentConfig):
    benchmark: str = "celeba"
    image_size: int = 64
    channels: int = 3
    latent_dim: int = 64
    g_widths: tuple[int, ...] = (64,) * 5
    e_widths: tuple[int, ...] = (64,) * 5
    dx_widths: tuple[int, ...] = (64,) * 5
    dz_hidden: tuple[int, ...] = (256, 256)
    iterations: int = 200_000
    n_dis: int = 3
    checkpoint_every: int = 10_000


@dataclass
class LSUNConfig(ExperimentConfig):
    benchmark: str = "lsun"
    image_size: int = 64
    channels: int = 3
    latent_dim: int = 32
    latent_size: int = 4
    g_widths: tuple[int, ...] = (64,) * 5
    e_widths: tuple[int, ...] = (64,) * 5
    dx_widths: tuple[int, ...] = (64,) * 5
    dz_hidden: tuple[int, ...] = (2048, 2048)
    iterations: int = 300_000
    n_dis: int = 3
    checkpoint_every: int = 10_000


@dataclass
class FolderConfig(ExperimentConfig):
    """A user's own images (`train/`, `test/normal/`, `test/<anomaly>/`): CIFAR-10 architecture at 32x32 RGB."""

    benchmark: str = "folder"
    channels: int = 3
    latent_dim: int = 256
    g_widths: tuple[int, ...] = (256, 256, 128, 64)
    e_widths: tuple[int, ...] = (64, 128, 256, 256)
    dx_widths: tuple[int, ...] = (32, 64, 128, 128)
    dz_hidden: tuple[int, ...] = (1024, 1024)
    iterations: int = 20_000


BENCHMARK_CONFIGS: dict[str, type[ExperimentConfig]] = {
    "mnist": MNISTConfig,
    "fashion_mnist": FashionMNISTConfig,
    "cifar10": CIFAR10Config,
    "coil100": COIL100Config,
    "celeba": CelebAConfig,
    "lsun": LSUNConfig,
    "digits": DigitsConfig,
    "synthetic": SyntheticConfig,
    "folder": FolderConfig,
}

# The CIFAR-10 ablation (book: Method > Relative-perceptual-L1, spec-ablation-distances): each variant trains and
# scores with its own distance.
ABLATIONS: dict[str, dict[str, Any]] = {
    "l2": {"distance": "l2"},
    "perceptual_l2": {"distance": "perceptual_l2"},
    "perceptual_l1": {"distance": "perceptual_l1"},
    "relative_perceptual_l1": {"distance": "relative_perceptual_l1"},
    "l2_manual": {"distance": "l2", "weight_policy": "manual", "lambda_e": 10.0, "lambda_g": 100.0},
}


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Convert `value` (a Python value or a CLI string) to the field type `tp`, or raise ConfigError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    optional = origin in (typing.Union, types.UnionType) and type(None) in args  # Optional[X] or X | None
    if optional:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    err = ConfigError(
        f"config key {key!r}: {value!r} is not a valid {getattr(tp, '__name__', tp)}"
        + (" (or None)" if optional else "")
        + "."
    )
    if origin is tuple:
        if isinstance(value, str):
            value = [
                v
                for v in value.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",")
                if v.strip()
            ]
        if not isinstance(value, (list, tuple)):
            raise err
        return tuple(_coerce(key, v, args[0]) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        raise err
    if tp is int:
        if isinstance(value, bool):
            raise err
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                raise err from None
        raise err
    if tp is float:
        if isinstance(value, bool):
            raise err
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise err from None
        raise err
    if tp is str:
        if isinstance(value, str):
            return value
        raise err
    raise err  # pragma: no cover - every field type is handled above


def make_config(
    benchmark: str, overrides: dict[str, Any] | None = None, ablation: str | None = None
) -> ExperimentConfig:
    """The paper's config for `benchmark`, with an optional ablation variant and overrides applied and validated."""
    if benchmark not in BENCHMARK_CONFIGS:
        raise ConfigError(f"benchmark {benchmark!r} is unknown: expected one of {sorted(BENCHMARK_CONFIGS)}.")
    cls = BENCHMARK_CONFIGS[benchmark]
    values: dict[str, Any] = {}
    if ablation is not None:
        if ablation not in ABLATIONS:
            raise ConfigError(f"ablation {ablation!r} is unknown: expected one of {sorted(ABLATIONS)}.")
        values.update(ABLATIONS[ablation])
    values.update(overrides or {})
    types = _field_types(cls)
    unknown = sorted(set(values) - set(types))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {unknown} for benchmark {benchmark!r}; allowed keys: {sorted(types)}."
        )
    if values.get("benchmark", benchmark) != benchmark:
        raise ConfigError(
            f"config key 'benchmark' = {values['benchmark']!r} contradicts the benchmark {benchmark!r} chosen."
        )
    coerced = {k: _coerce(k, v, types[k]) for k, v in values.items()}
    return cls(**coerced).validate()


def config_from_parameters(
    benchmark: str, overrides: dict[str, Any] | None = None, ablation: str | None = None, **settings: Any
) -> ExperimentConfig:
    """The config of one notebook run (notebooks/train_evaluate.ipynb, `piad reproduce`): `settings` that are None
    keep the benchmark's paper default, and `overrides` (any config keys) win over `settings`."""
    values = {k: v for k, v in settings.items() if v is not None}
    return make_config(benchmark, {**values, **overrides_parameter(overrides)}, ablation=ablation)


def overrides_parameter(overrides) -> dict[str, Any]:
    """The notebooks' `overrides` parameter as a dict: a dict, None, or (as `papermill -p overrides ...` passes it)
    a string of `key=value` pairs or a JSON object. Anything else: ConfigError naming the parameter."""
    if overrides is None or overrides == "":
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    if isinstance(overrides, str):
        text = overrides.strip()
        if text.startswith("{"):
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                return obj
        elif text and all("=" in item for item in text.split()):
            return parse_assignments(text.split())
    raise ConfigError(
        f"parameter 'overrides' = {overrides!r}: expected a dict of config keys, e.g. -y 'overrides: {{n_dis: 3}}', "
        "or a string of key=value pairs, e.g. -p overrides 'n_dis=3 batch_size=16'."
    )


def threads_parameter(threads) -> int:
    """The notebooks' `threads` parameter: a number of CPU threads (0: torch's default). Anything else, or an
    absurd count (over max(256, CPUs): torch runs out of memory creating them): ConfigError naming the parameter.
    (More threads than cores only slows torch down, but a cluster job's --cpus-per-job may exceed what this process
    sees, so that is allowed here.)"""
    n = max(256, os.cpu_count() or 1)
    try:
        value = int(threads) if not isinstance(threads, (bool, float)) or float(threads).is_integer() else None
    except (TypeError, ValueError):
        value = None
    if value is None or not 0 <= value <= n:
        raise ConfigError(
            f"parameter 'threads' = {threads!r}: expected a number of CPU threads from 0 (torch's default) to {n}."
        )
    return value


def parse_assignments(items: list[str]) -> dict[str, str]:
    """`["key=value", ...]` from `--set` into a dict (values stay strings; `make_config` types them)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config saved with `to_json` (validates every key and type)."""
    d = dict(d)
    d.pop("config_class", None)
    if "benchmark" not in d:
        raise ConfigError("saved config has no 'benchmark' key; is this a piad config.json?")
    return make_config(d["benchmark"], d)


def load_config(path) -> ExperimentConfig:
    try:
        with open(path) as f:
            d = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} could not be read as JSON: {e}") from None
    return config_from_dict(d)
