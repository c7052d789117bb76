"""Natural-image crops (piad.data.natural): images from no benchmark, seeded, in the data layer's range."""

import torch

from piad.data.natural import PHOTOGRAPHS, natural_crops, photographs


def test_crops_are_seeded_rgb_in_the_unit_range():
    a, b, c = natural_crops(40, 32, seed=0), natural_crops(40, 32, seed=0), natural_crops(40, 32, seed=1)
    assert a.shape == (40, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1 and a.min() < -0.5 and a.max() > 0.5  # real contrast, full range used
    assert a.std(dim=(1, 2, 3)).min() > 0  # no blank crop


def test_every_photograph_ships_with_scikit_image():
    """No download: each listed photograph loads from the installed package, as RGB in [0, 1]."""
    photos = photographs()
    assert len(photos) == len(PHOTOGRAPHS)
    for p in photos:
        assert p.shape[0] == 3 and p.min() >= 0 and p.max() <= 1 and min(p.shape[1:]) >= 100
