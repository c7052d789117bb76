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
