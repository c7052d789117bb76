"""Configs: paper defaults, overrides, and clear refusals (book: Method > Model, spec-architecture-table)."""

import json
import re
from pathlib import Path

import pytest
from conftest import book_value

from piad.errors import ConfigError
from piad.run.config import ABLATIONS, BENCHMARK_CONFIGS, config_from_dict, make_config, parse_assignments

BOOK = Path(__file__).resolve().parents[1] / "book" / "method"
# rows of the method chapter's tables -> the benchmarks they describe
ROWS = {
    "MNIST, Fashion-MNIST": ("mnist", "fashion_mnist"),
    "CIFAR-10 (and its ablation)": ("cifar10",),
    "COIL-100": ("coil100",),
    "CelebA": ("celeba",),
    "LSUN": ("lsun",),
}


def book_table(page: str, first_header: str) -> dict[str, list[str]]:
    """The Markdown table of book/method/`page` whose header starts with `first_header`: first cell -> the others."""
    lines = (BOOK / page).read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"| {first_header} |"))
    rows = {}
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def tex_number(text: str) -> float:
    """'10^{-4}', '5 \\cdot 10^{-4}', '0.05', '200' as numbers."""
    m = re.fullmatch(r"(?:([\d.]+)\s*\\cdot\s*)?10\^\{(-?\d+)\}", text.strip())
    if m:
        return float(m.group(1) or 1) * 10 ** int(m.group(2))
    return float(text)


def widths(cell: str) -> tuple[int, ...]:
    """'256, 256, 128, 64' or '64 (x5)'."""
    m = re.fullmatch(r"(\d+) \(x(\d+)\)", cell)
    return (int(m.group(1)),) * int(m.group(2)) if m else tuple(int(w) for w in cell.split(","))


def paper_configs(benchmark):
    yield make_config(benchmark)
    if benchmark == "cifar10":
        yield from (make_config("cifar10", ablation=a) for a in ABLATIONS)


def test_the_method_chapters_tables_are_the_configs():
    """Every row of the iteration table (Method > Training) and of the architecture table (Method > Model,
    spec-architecture-table) against every benchmark's config, the CIFAR-10 ablation variants included."""
    training = book_table("training.md", "benchmark")
    model = book_table("model.md", "benchmark")
    assert set(training) == set(ROWS) and set(model) == set(ROWS)
    for row, benchmarks in ROWS.items():
        iterations, n_dis = training[row]
        image, latent, g, e, dx, dz = model[row]
        for cfg in (c for b in benchmarks for c in paper_configs(b)):
            where = f"{cfg.benchmark} ({row})"
            assert cfg.iterations == int(iterations.replace(",", "")) and cfg.n_dis == int(n_dis), where
            assert f"{cfg.channels}x{cfg.image_size}x{cfg.image_size}" == image, where
            assert f"{cfg.latent_dim}x{cfg.latent_size}x{cfg.latent_size}" == latent, where
            assert (cfg.g_widths, cfg.e_widths, cfg.dx_widths, cfg.dz_hidden) == tuple(
                widths(c) for c in (g, e, dx, dz)
            ), where


@pytest.mark.parametrize("benchmark", sorted(b for bs in ROWS.values() for b in bs))
def test_paper_defaults_are_the_method_chapters(benchmark):
    """The optimisation, critic, weight-rule and distance defaults, each read from the sentence of the method
    chapter that states it (Training: spec-critic-loss, spec-optimisation; Weight policy; Relative-perceptual-L1)."""
    lr_eg = tex_number(book_value("method/training.md", r"together \(learning rate \$([^$]+)\$\)"))
    lr_d = tex_number(book_value("method/training.md", r"for \$D_Z\$ \(learning rate \$([^$]+)\$ each\)"))
    betas = book_value("method/training.md", r"\$\\beta = \(([^)]+)\)\$")
    expected = {
        "gp_weight": tex_number(book_value("method/training.md", r"\$\\gamma = ([^$]+)\$")),
        "eps_drift": tex_number(book_value("method/training.md", r"\$\\varepsilon = ([^$]+)\$")),
        "lr_eg": lr_eg,
        "lr_d": lr_d,
        "beta1": float(betas.split(",")[0]),
        "beta2": float(betas.split(",")[1]),
        "weight_decay": tex_number(book_value("method/training.md", r"weight decay \$([^$]+)\$")),
        "batch_size": int(book_value("method/training.md", r"Batch size (\d+) everywhere")),
        "policy_every": int(book_value("method/weight_policy.md", r"period \$T = (\d+)\$ iterations")),
        "policy_history": int(book_value("method/weight_policy.md", r"history length \$H = (\d+)\$")),
        "policy_ema": float(book_value("method/weight_policy.md", r"smoothing factor \$\\alpha = ([\d.]+)\$")),
        "lambda_e": float(book_value("method/weight_policy.md", r"\$\\lambda_E = ([\d.]+)\$ and")),
        "lambda_g": float(book_value("method/weight_policy.md", r"and \$\\lambda_G = ([\d.]+)\$")),
        "layer": book_value("method/relative_perceptual_l1.md", r'\("(relu\d_\d)", index'),
    }
    cfg = make_config(benchmark)
    got = {k: getattr(cfg, k) for k in expected}
    assert got == {k: pytest.approx(v, rel=1e-12) if isinstance(v, float) else v for k, v in expected.items()}
    assert (cfg.distance, cfg.weight_policy, cfg.vgg_weights, cfg.feature_stats) == (
        "relative_perceptual_l1",
        "gradient_normalizing",
        "imagenet",  # the ImageNet VGG-19 (VGG19_Weights.IMAGENET1K_V1)
        "imagenet",  # the authors' statistics of relu4_2 over ImageNet
    )


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
        # out of range: each would crash later inside torch, or silently train something else than PIAD
        ({"beta1": 1.0}, "'beta1'"),
        ({"beta2": 1.0}, "'beta2'"),
        ({"beta1": -0.1}, "'beta1'"),
        ({"policy_ema": 0.0}, "'policy_ema'"),  # the EMA would never move: lambda frozen at the first records
        ({"policy_ema": 1.5}, "'policy_ema'"),
        ({"policy_every": 0}, "'policy_every'"),
        ({"policy_history": 0}, "'policy_history'"),
        ({"n_dis": 0}, "'n_dis'"),
        ({"latent_dim": 0}, "'latent_dim'"),
        ({"lr_eg": 0.0}, "'lr_eg'"),  # a learning rate of 0 trains nothing
        ({"lr_d": 0.0}, "'lr_d'"),
        ({"lr_d": float("inf")}, "'lr_d'"),
        ({"lambda_e": 0.0}, "'lambda_e'"),  # a manual weight of 0 switches the reconstruction off
        ({"lambda_g": -1.0}, "'lambda_g'"),
        ({"gp_weight": -1.0}, "'gp_weight'"),
        ({"eps_drift": -0.001}, "'eps_drift'"),
        ({"weight_decay": -1e-8}, "'weight_decay'"),
        ({"channels": 2}, "'channels'"),
        ({"latent_size": 3}, "'latent_size'"),
        ({"seed": -1}, "'seed'"),
        ({"run": -1}, "'run'"),
        ({"checkpoint_every": 0}, "'checkpoint_every'"),
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        make_config("mnist", overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"beta1": 0.0, "beta2": 0.999},
        {"policy_ema": 1.0},  # no smoothing: each record counts alone
        {"policy_every": 1, "policy_history": 1},
        {"gp_weight": 0.0, "eps_drift": 0.0, "weight_decay": 0.0},  # terms switched off, still well defined
        {"weight_policy": "manual", "lambda_e": 1e-3, "lambda_g": 1e3},
    ],
)
def test_values_at_the_edges_of_the_ranges_are_accepted(overrides):
    cfg = make_config("mnist", overrides)
    assert {k: getattr(cfg, k) for k in overrides} == overrides


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
