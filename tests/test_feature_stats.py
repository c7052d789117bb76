"""`piad feature-stats`: per-channel statistics in the authors' file format, usable as `feature_stats`."""

import numpy as np
import torch
from PIL import Image

from piad.cli import main
from piad.run.distance import build_distance


def test_feature_stats_from_a_folder_match_an_independent_computation(tmp_path):
    rng = np.random.default_rng(0)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "stats.pt"
    assert (
        main(
            [
                "feature-stats",
                "--images",
                str(imgs),
                "--vgg-weights",
                "random",
                "--layer",
                "relu2_1",
                "--image-size",
                "16",
                "--device",
                "cpu",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    stats = torch.load(out, weights_only=True)
    assert sorted(stats) == ["r11", "r12", "r21"]
    mean, std = stats["r21"]
    assert mean.shape == std.shape == (1, 128, 1, 1)
    # independent: raw phi of the same images, statistics over (N, H, W) per channel
    d = build_distance("perceptual_l2", "random", None, "relu2_1")
    x = (
        torch.stack(
            [
                torch.from_numpy(np.asarray(Image.open(imgs / f"{i}.png"), dtype=np.float32)).permute(2, 0, 1)
                for i in range(5)
            ]
        )
        / 127.5
        - 1
    )
    with torch.no_grad():
        phi = d.features(x).double()
    assert torch.allclose(mean.double().flatten(), phi.mean((0, 2, 3)), rtol=1e-4, atol=1e-6)
    ref_std = phi.std((0, 2, 3), unbiased=False)
    live = ref_std > 1e-12
    assert torch.allclose(std.double().flatten()[live], ref_std[live], rtol=1e-3, atol=1e-6)
    # the file plugs into the distance as `feature_stats`
    rel = build_distance("relative_perceptual_l1", "random", str(out), "relu2_1")
    assert torch.equal(rel.stats_mean, mean)
    # and is not overwritten without asking
    assert (
        main(
            [
                "feature-stats",
                "--images",
                str(imgs),
                "--vgg-weights",
                "random",
                "--layer",
                "relu2_1",
                "--output",
                str(out),
            ]
        )
        == 2
    )
