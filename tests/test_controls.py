"""Training-free controls (piad.run.controls): each equals an independent computation with the distance itself."""

import pytest
import torch

from piad.run.controls import ControlSettings, control_scores, features, mean_image_scores, nearest_scores
from piad.run.distance import build_distance

KINDS = ("relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2")


def _distance(kind):
    return build_distance(kind, vgg_weights="random", feature_stats=None, layer="relu2_1", seed=3)


def _images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, generator=g) * 2 - 1


@pytest.mark.parametrize("kind", KINDS)
def test_mean_image_control_is_the_distance_to_the_mean_training_image(kind):
    d = _distance(kind)
    train, test = _images(20, 0), _images(7, 1)
    got = mean_image_scores(d, train, features(d, test))
    with torch.no_grad():
        want = d(test, train.mean(0, keepdim=True).expand_as(test))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
def test_nearest_control_is_the_smallest_distance_to_a_training_image(kind):
    """With candidates >= the reference set, the search is exhaustive: brute force over every pair agrees."""
    d = _distance(kind)
    train, test = _images(12, 2), _images(5, 3)
    got = nearest_scores(d, features(d, train), features(d, test), candidates=12)
    with torch.no_grad():
        brute = torch.stack([d(test, y.expand_as(test)) for y in train]).min(0).values
    torch.testing.assert_close(got, brute, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ("perceptual_l2", "l2"))
def test_nearest_by_squared_error_needs_one_candidate(kind):
    """For the squared-error distances the L2 search already finds d's nearest image."""
    d = _distance(kind)
    train, test = _images(15, 4), _images(6, 5)
    one = nearest_scores(d, features(d, train), features(d, test), candidates=1)
    every = nearest_scores(d, features(d, train), features(d, test), candidates=15)
    torch.testing.assert_close(one, every, rtol=1e-5, atol=1e-7)


def test_a_training_image_scores_zero_under_the_nearest_control():
    d = _distance("relative_perceptual_l1")
    train = _images(10, 6)
    s = nearest_scores(d, features(d, train), features(d, train[:3]), candidates=4)
    assert torch.all(s.abs() < 1e-6)


def test_reference_subset_is_seeded_and_both_controls_are_reported():
    d = _distance("relative_perceptual_l1")
    train, test = _images(40, 7), _images(8, 8)
    f = features(d, test)
    s1, info = control_scores(d, train, f, ControlSettings(n_reference=10, seed=1))
    s2, _ = control_scores(d, train, f, ControlSettings(n_reference=10, seed=1))
    s3, _ = control_scores(d, train, f, ControlSettings(n_reference=10, seed=2))
    assert set(s1) == {"mean_image", "nearest"} and info["n_reference"] == 10 and info["n_train"] == 40
    assert torch.equal(s1["nearest"], s2["nearest"]) and not torch.equal(s1["nearest"], s3["nearest"])
    everything, info = control_scores(d, train, f, ControlSettings(n_reference=0, candidates=40))
    assert info["n_reference"] == 40 and torch.all(everything["nearest"] <= s1["nearest"] + 1e-7)


def test_settings_out_of_range_are_refused():
    with pytest.raises(ValueError):
        ControlSettings(candidates=0)
    with pytest.raises(ValueError):
        ControlSettings(n_reference=-1)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--results-dir", "no/such/folder"], "is not a folder"),
        (["--results-dir", ".", "--candidates", "0"], "--candidates"),
        (["--results-dir", ".", "--feature-stats", "x.pt"], "needs --folder"),
        (["--results-dir", ".", "--feature-stats", "x.pt", "--folder", "c2"], "is not a file"),
    ],
)
def test_control_command_refuses_bad_input_in_one_line(args, words):
    from helpers import run_cli

    p = run_cli("control", *args)
    assert p.returncode == 2 and words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def _digits_run(root, **changes):
    """A finished digits run (the smoke profile's config, `changes` applied) under root/digits/0/0."""
    import json

    from piad.paths import repo_root

    cfg = json.loads((repo_root() / "results" / "smoke" / "digits" / "0" / "0" / "config.json").read_text())
    d = root / "digits" / "0" / "0"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps({**cfg, **changes}))
    (d / "metrics.json").write_text(json.dumps({"status": "ok", "roc_auc": 0.5}))


def test_a_control_computed_for_other_inputs_than_its_run_now_has_is_computed_again(tmp_path):
    """A complete control is kept while its run's inputs stay the same; once the run in its place names another layer
    (e.g. it was retrained and moved in), the control is computed again for the new inputs, and says so."""
    import json

    from piad.experiments.controls import control_dir, run_controls

    settings = ControlSettings(n_reference=50, candidates=2, batch_size=64)
    _digits_run(tmp_path)
    assert len(run_controls(tmp_path, settings=settings, log=lambda s: None)) == 1
    logged = []
    assert run_controls(tmp_path, settings=settings, log=logged.append) == []  # same inputs: kept
    assert not any("again" in line for line in logged)
    _digits_run(tmp_path, layer="relu1_1")
    logged = []
    assert len(run_controls(tmp_path, settings=settings, log=logged.append)) == 1
    assert any("digits/0" in line and "layer" in line and "again" in line for line in logged), logged
    prov = json.loads((control_dir(tmp_path, "digits", 0) / "provenance.json").read_text())
    assert prov["weights"]["layer"] == "relu1_1"


def test_the_statistics_make_a_control_stale_only_where_the_distance_reads_them(tmp_path):
    import json

    from piad.experiments.controls import stale_inputs
    from piad.run.config import config_from_dict

    folder = tmp_path / "control"
    folder.mkdir()
    recorded = {"name": "cifar10_train.pt", "source": "results/x/cifar10_train.pt", "sha256": "0"}
    prov = {
        "benchmark": "digits",
        "normal_class": 0,
        "distance": "relative_perceptual_l1",
        "weights": {"layer": "relu2_1", "vgg_weights": {"name": "random VGG-19"}, "feature_stats": recorded},
    }
    (folder / "provenance.json").write_text(json.dumps(prov))
    base = {"benchmark": "digits", "vgg_weights": "random", "layer": "relu2_1", "distance": "relative_perceptual_l1"}
    cfg = config_from_dict({**base, "feature_stats": "elsewhere/cifar10_train.pt"})
    assert stale_inputs(folder, cfg) == []  # the same file, named from another place
    cfg = config_from_dict({**base, "feature_stats": "y/natural_crops.pt"})
    assert stale_inputs(folder, cfg) == ["feature_stats"]
    prov["distance"] = "l2"
    (folder / "provenance.json").write_text(json.dumps(prov))
    assert stale_inputs(folder, config_from_dict({**base, "distance": "l2", "feature_stats": "y/natural.pt"})) == []
    assert stale_inputs(folder, config_from_dict({**base, "distance": "perceptual_l2"})) == ["distance"]
    (folder / "provenance.json").unlink()
    assert stale_inputs(folder, cfg) == ["provenance.json"]
