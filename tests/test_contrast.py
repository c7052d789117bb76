"""The anomaly score of an equally good reconstruction barely moves with image contrast for relative-perceptual-L1,
while absolute errors grow with contrast (book: Experiments > Contrast robustness, spec-contrast-study)."""

import pytest
import torch
from conftest import REPO, SUBSTITUTE_VGG, asset

from piad.data import load_benchmark
from piad.experiments.contrast import box_blur, contrast_study, make_study_distances, scale_contrast

CIFAR_STATS = REPO / "results" / "offline" / "feature_stats" / "cifar10_train_vgg19caffe_relu3_1.pt"


@pytest.fixture(scope="module")
def study():
    vgg = str(asset(SUBSTITUTE_VGG.name))
    if not CIFAR_STATS.exists():
        pytest.skip(f"{CIFAR_STATS} (statistics from `piad reproduce --profile offline`) is absent")
    images = load_benchmark("digits", 0, channels=3).test[:96]
    dists = make_study_distances(vgg, str(CIFAR_STATS), "relu3_1", device="cpu")
    return contrast_study(images, dists)


def test_contrast_scaling_keeps_the_image_mean_and_scales_the_error():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    y = box_blur(x)
    xc, yc = scale_contrast(x, 2.0), scale_contrast(y, 2.0, mean=x.mean((1, 2, 3), keepdim=True))
    assert torch.allclose(xc.mean((1, 2, 3)), x.mean((1, 2, 3)), atol=1e-6)
    assert torch.allclose(xc - yc, 2 * (x - y), atol=1e-5)


def test_l2_ratio_is_exactly_c_squared(study):
    for c, r in zip(study["contrasts"], study["ratio"]["l2"], strict=True):
        assert r == pytest.approx(c * c, rel=1e-3)


def test_relative_perceptual_l1_is_the_most_contrast_robust(study):
    spread = {k: max(v) / min(v) for k, v in study["ratio"].items()}
    assert spread["relative_perceptual_l1"] < spread["perceptual_l1"] < spread["l2"]
    assert spread["relative_perceptual_l1"] < spread["perceptual_l2"]
    assert 0.3 < min(study["ratio"]["relative_perceptual_l1"]) and max(study["ratio"]["relative_perceptual_l1"]) < 1.6
