"""Configs: paper defaults, overrides, and clear refusals (book: Method > Model, spec-architecture-table)."""

import json

import pytest

from piad.errors import ConfigError
from piad.run.config import ABLATIONS, BENCHMARK_CONFIGS, config_from_dict, make_config, parse_assignments


def test_paper_defaults():
    m, c, lsun = make_config("mnist"), make_config("cifar10"), make_config("lsun")
    assert (m.iterations, m.n_dis, m.batch_size, m.latent_dim) == (50_000, 2, 32, 32)
    assert (c.iterations, c.latent_dim, c.g_widths, c.dz_hidden) == (100_000, 256, (256, 256, 128, 64), (1024, 1024))
    assert (lsun.iterations, lsun.n_dis, lsun.latent_size) == (300_000, 3, 4)
    assert (m.lr_eg, m.lr_d, m.beta1, m.beta2, m.weight_decay) == (1e-4, 5e-4, 0.5, 0.99, 1e-8)
    assert (m.distance, m.layer, m.vgg_weights, m.feature_stats) == (
        "relative_perceptual_l1",
        "relu4_2",
        "imagenet",
        "imagenet",
    )
    assert make_config("coil100").iterations == 20_000 and make_config("celeba").iterations == 200_000


def test_overrides_from_strings_are_typed():
    cfg = make_config(
        "mnist",
        parse_assignments(
            ["iterations=1_000", "lr_eg=0.001", "cache_features=false", "g_widths=16,16,16,16", "feature_stats=none"]
        ),
    )
    assert cfg.iterations == 1000 and cfg.lr_eg == 0.001 and cfg.cache_features is False
    assert cfg.g_widths == (16, 16, 16, 16) and cfg.feature_stats is None


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"itertions": 5}, "unknown config key"),
        ({"iterations": "many"}, "'iterations'"),
        ({"iterations": 2.5}, "'iterations'"),
        ({"iterations": -3}, "'iterations'"),
        ({"cache_features": "maybe"}, "'cache_features'"),
        ({"image_size": 48}, "'image_size'.*power of two"),
        ({"layer": "relu6_1"}, "'layer'"),
        ({"distance": "l3"}, "'distance'"),
        ({"weight_policy": "auto"}, "'weight_policy'"),
        ({"batch_size": 1}, "'batch_size'"),
        ({"normal_class": -1}, "'normal_class'"),
        ({"lr_eg": float("nan")}, "'lr_eg'"),
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config("mnist", overrides)


def test_unknown_benchmark_and_ablation():
    with pytest.raises(ConfigError, match="benchmark"):
        make_config("imagenet")
    with pytest.raises(ConfigError, match="ablation"):
        make_config("cifar10", ablation="l4")
    with pytest.raises(ConfigError, match="key=value"):
        parse_assignments(["iterations"])


def test_ablations():
    assert make_config("cifar10", ablation="l2").distance == "l2"
    manual = make_config("cifar10", ablation="l2_manual")
    assert (manual.weight_policy, manual.lambda_e, manual.lambda_g) == ("manual", 10.0, 100.0)
    assert set(ABLATIONS) >= {"l2", "perceptual_l2", "perceptual_l1", "l2_manual"}


@pytest.mark.parametrize("benchmark", sorted(BENCHMARK_CONFIGS))
def test_json_roundtrip(benchmark):
    cfg = make_config(benchmark, {"run": 2})
    assert config_from_dict(json.loads(cfg.to_json())) == cfg


def test_seed_derivation():
    assert make_config("mnist", {"normal_class": 3, "run": 1}).resolved_seed() == 3001
    assert make_config("mnist", {"seed": 7}).resolved_seed() == 7
