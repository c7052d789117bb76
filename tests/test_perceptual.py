"""Relative-perceptual-L1 and its variants (book: Method > Relative-perceptual-L1, spec-rpl1)."""

import urllib.error

import pytest
import torch
from conftest import IMAGENET_STATS, SUBSTITUTE_VGG, asset

from piad.errors import ConfigError, ResourceError
from piad.model.perceptual import PerceptualDistance
from piad.model.vgg import VGG19_CONVS, VGG_RELU_INDEX, stats_key
from piad.run.config import make_config
from piad.run.distance import build_distance, make_distance
from piad.run.resources import resolve_vgg_state_dict

LAYER = "relu2_1"  # shallow: fast on CPU; the formula does not depend on the layer


def rand_images(n=4, c=3, s=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, c, s, s, generator=g) * 2 - 1


def random_stats(channels=128, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.rand(1, channels, 1, 1, generator=g)
    return mean, (torch.rand(1, channels, 1, 1, generator=g) + 0.5) / scale


def stats_file(tmp_path, layer=LAYER, channels=128, scale=1.0, seed=0, name="stats.pt"):
    mean, std = random_stats(channels, scale, seed)
    path = tmp_path / name
    torch.save({stats_key(layer): (mean, std)}, path)
    return str(path), mean, std


def vgg_sd(layer=LAYER, seed=0):
    return resolve_vgg_state_dict("random", layer, seed)[0]


@pytest.fixture(scope="module")
def dist():
    return PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER)


def test_zero_for_identical_inputs(dist):
    x = rand_images()
    assert torch.allclose(dist(x, x), torch.zeros(4), atol=1e-7)


def test_one_distance_per_sample_and_independence(dist):
    x, y = rand_images(seed=1), rand_images(seed=2)
    d = dist(x, y)
    assert d.shape == (4,)
    y2 = y.clone()
    y2[3] = rand_images(1, seed=9)[0]
    d2 = dist(x, y2)
    assert torch.allclose(d[:3], d2[:3], atol=1e-6) and not torch.isclose(d[3], d2[3])


def test_equals_independent_recomputation_from_vgg_features(tmp_path):
    """Recompute f(x) with a separately built torchvision VGG-19 and the formula written out per sample."""
    from torchvision.models.vgg import cfgs, make_layers

    mean, std = random_stats()
    d = PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER, (mean, std))
    net = make_layers(cfgs["E"])[:7].eval()  # torchvision's own VGG-19 layers, up to relu2_1
    net.load_state_dict(d.vgg.net.state_dict())
    x, y = rand_images(3, 1, seed=3), rand_images(3, 1, seed=4)  # grey inputs exercise the channel repeat
    im_mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    im_std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        f = lambda t: (net(((t.repeat(1, 3, 1, 1) + 1) / 2 - im_mean) / im_std) - mean) / std  # noqa: E731
        fx, fy = f(x), f(y)
        expected = [float((fx[i] - fy[i]).abs().mean() / fx[i].abs().mean()) for i in range(3)]
        got = d(x, y)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    pl1 = PerceptualDistance("perceptual_l1", vgg_sd(), LAYER, (mean, std))
    assert pl1(x, y).tolist() == pytest.approx([float((fx[i] - fy[i]).abs().mean()) for i in range(3)], rel=1e-5)
    pl2 = PerceptualDistance("perceptual_l2", vgg_sd(), LAYER)
    with torch.no_grad():
        px = net(((x.repeat(1, 3, 1, 1) + 1) / 2 - im_mean) / im_std)
        py = net(((y.repeat(1, 3, 1, 1) + 1) / 2 - im_mean) / im_std)
    assert pl2(x, y).tolist() == pytest.approx([float(((px[i] - py[i]) ** 2).mean()) for i in range(3)], rel=1e-5)
    l2 = PerceptualDistance("l2")
    assert l2.vgg is None
    zx, zy = ((x.repeat(1, 3, 1, 1) + 1) / 2 - im_mean) / im_std, ((y.repeat(1, 3, 1, 1) + 1) / 2 - im_mean) / im_std
    assert l2(x, y).tolist() == pytest.approx([float(((zx[i] - zy[i]) ** 2).mean()) for i in range(3)], rel=1e-5)


def test_relative_variant_invariant_to_scaling_of_normalised_features():
    """Dividing sigma by s multiplies f(x) and f(y) by s: the relative distance is unchanged, plain L1 scales."""
    s1, s2 = random_stats(scale=1.0), random_stats(scale=7.0)
    x, y = rand_images(seed=5), rand_images(seed=6)
    r1 = PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER, s1)(x, y)
    r2 = PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER, s2)(x, y)
    assert torch.allclose(r1, r2, rtol=1e-4)
    a1 = PerceptualDistance("perceptual_l1", vgg_sd(), LAYER, s1)(x, y)
    a2 = PerceptualDistance("perceptual_l1", vgg_sd(), LAYER, s2)(x, y)
    assert torch.allclose(a2, 7 * a1, rtol=1e-4)


def test_denominator_uses_the_input_not_the_reconstruction(dist):
    x, y = rand_images(seed=7), rand_images(seed=8) * 0.1
    fx, fy = dist.features(x), dist.features(y)
    expected = (fx - fy).abs().flatten(1).mean(1) / fx.abs().flatten(1).mean(1)
    assert torch.allclose(dist(x, y), expected, rtol=1e-5)
    assert not torch.allclose(dist(x, y), dist(y, x), rtol=1e-3)


def test_grey_equals_its_three_channel_repeat(dist):
    x, y = rand_images(c=1, seed=10), rand_images(c=1, seed=11)
    assert torch.allclose(dist(x, y), dist(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1)), atol=1e-6)


def test_vgg_is_frozen_eval_and_stores_no_gradients(dist):
    dist.train()
    assert not dist.vgg.net.training
    dist.vgg.train()  # called on its own, as nn.Module: train mode by default, still with an eval-mode VGG inside
    assert dist.vgg.training and not dist.vgg.net.training
    y = rand_images(seed=12).requires_grad_(True)
    dist(rand_images(seed=13), y).sum().backward()
    assert y.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in dist.vgg.parameters())
    assert len(dist.vgg.net) == 7  # computes only up to relu2_1


def test_unknown_kind_and_layer_are_refused():
    for make in (PerceptualDistance, build_distance):
        with pytest.raises(ConfigError, match="kind='l3'"):
            make("l3")
        with pytest.raises(ConfigError, match="layer='relu9_9'"):
            make("perceptual_l2", layer="relu9_9")


def test_the_model_refuses_tensors_that_do_not_fit_the_kind():
    with pytest.raises(ValueError, match="kind='relative_perceptual_l1' needs vgg_state_dict"):
        PerceptualDistance("relative_perceptual_l1", None, LAYER)
    with pytest.raises(ValueError, match="kind='l2' uses no VGG"):
        PerceptualDistance("l2", vgg_sd(), LAYER)
    with pytest.raises(ValueError, match="kind='perceptual_l2' uses no feature statistics"):
        PerceptualDistance("perceptual_l2", vgg_sd(), LAYER, random_stats())
    with pytest.raises(ValueError, match=r"shape \(1, 128, 1, 1\), got \(1, 64, 1, 1\)"):
        PerceptualDistance("perceptual_l1", vgg_sd(), LAYER, random_stats(channels=64))
    with pytest.raises(RuntimeError, match="Missing key"):
        PerceptualDistance("perceptual_l2", vgg_sd("relu1_1"), LAYER)


def test_vgg_layout_is_torchvisions_vgg19():
    """The one layout table (conv channels, ReLU indices) equals torchvision's own VGG-19 `features`."""
    from torchvision.models.vgg import cfgs, make_layers

    net = make_layers(cfgs["E"])
    convs = {i: (m.in_channels, m.out_channels) for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d)}
    assert VGG19_CONVS == convs
    relus = [i for i, m in enumerate(net) if isinstance(m, torch.nn.ReLU)]
    assert sorted(VGG_RELU_INDEX.values()) == relus
    assert (VGG_RELU_INDEX["relu1_1"], VGG_RELU_INDEX["relu4_2"], VGG_RELU_INDEX["relu5_4"]) == (1, 22, 35)


def test_build_distance_hands_the_resolved_tensors_to_the_model(tmp_path):
    """build_distance = the model fed with what piad.run.resources resolves; the seed picks the random VGG."""
    path, mean, std = stats_file(tmp_path)
    x, y = rand_images(seed=20), rand_images(seed=21)
    d = build_distance("relative_perceptual_l1", "random", path, LAYER, seed=4)
    ref = PerceptualDistance("relative_perceptual_l1", vgg_sd(seed=4), LAYER, (mean, std))
    with torch.no_grad():
        assert torch.equal(d(x, y), ref(x, y))
    cfg = make_config("mnist", {"vgg_weights": "random", "feature_stats": path, "layer": LAYER})
    same, other = make_distance(cfg, seed=4), make_distance(cfg, seed=5)
    assert torch.equal(same.vgg.net[0].weight, d.vgg.net[0].weight)
    assert not torch.equal(other.vgg.net[0].weight, d.vgg.net[0].weight)
    assert list(d.sources) == ["distance", "vgg_weights", "layer", "feature_stats"]
    assert list(build_distance("perceptual_l2", "random", path, LAYER).sources) == ["distance", "vgg_weights", "layer"]
    assert build_distance("l2", "no such file", "no such file").sources == {"distance": "l2"}


def test_missing_files_and_bad_shapes_name_the_parameter(tmp_path):
    with pytest.raises(ResourceError, match="vgg_weights"):
        build_distance(vgg_weights=str(tmp_path / "missing.pth"), layer=LAYER)
    with pytest.raises(ResourceError, match="feature_stats"):
        build_distance(vgg_weights="random", feature_stats=str(tmp_path / "missing.pt"), layer=LAYER)
    bad, _, _ = stats_file(tmp_path, channels=64)
    with pytest.raises(ResourceError, match=r"feature_stats.*shape"):
        build_distance(vgg_weights="random", feature_stats=bad, layer=LAYER)
    torch.save({"0.weight": torch.zeros(64, 3, 5, 5)}, tmp_path / "w.pth")
    with pytest.raises(ResourceError, match="vgg_weights"):
        build_distance(vgg_weights=str(tmp_path / "w.pth"), layer=LAYER, feature_stats=None)


def test_imagenet_specs_offline_raise_helpful_errors(monkeypatch):
    import urllib.request

    import torch.hub

    def offline(*a, **k):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ResourceError, match=r"vgg_weights='imagenet'.*Fixes"):
        build_distance(vgg_weights="imagenet", feature_stats=None, layer=LAYER)
    with pytest.raises(ResourceError, match=r"feature_stats='imagenet'.*Fixes"):
        build_distance(vgg_weights="random", feature_stats="imagenet", layer=LAYER)


def test_imagenet_stats_file_is_checksummed_and_cached(monkeypatch, tmp_path):
    """feature_stats='imagenet' reads the cached copy only if its sha256 matches the pinned one."""
    from piad.run import resources

    src = asset(IMAGENET_STATS.name)
    monkeypatch.setenv("PIAD_CACHE", str(tmp_path))
    monkeypatch.setattr(
        resources.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline"))
    )
    (tmp_path / resources.IMAGENET_STATS_FILENAME).write_bytes(b"not the file")
    with pytest.raises(ResourceError, match="feature_stats='imagenet'"):
        build_distance(vgg_weights="random", feature_stats="imagenet", layer="relu3_1")
    (tmp_path / resources.IMAGENET_STATS_FILENAME).write_bytes(src.read_bytes())
    d = build_distance(vgg_weights="random", feature_stats="imagenet", layer="relu3_1")
    assert torch.equal(d.stats_mean, torch.load(src, weights_only=True)["r31"][0])


def test_authors_imagenet_statistics_load_and_r42_is_used():
    path = asset(IMAGENET_STATS.name)
    d = build_distance(vgg_weights="random", feature_stats=str(path), layer="relu4_2")
    mean, std = torch.load(path, weights_only=True)["r42"]
    assert torch.equal(d.stats_mean, mean) and torch.equal(d.stats_std, std)
    assert d.vgg.net[-1].__class__.__name__ == "ReLU" and d.vgg.net[-2].out_channels == 512


def test_partial_substitute_vgg_loads_for_relu3_1_only():
    path = str(asset(SUBSTITUTE_VGG.name))
    d = build_distance(vgg_weights=path, feature_stats=None, layer="relu3_1")
    assert d.features(rand_images(2, 3, 32)).shape == (2, 256, 8, 8)
    with pytest.raises(ResourceError, match=r"relu4_2"):
        build_distance(vgg_weights=path, feature_stats=None, layer="relu4_2")


@pytest.mark.parametrize("kind", ["relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2"])
def test_the_anomaly_maps_mean_is_the_distance(kind):
    """At relu1_1 (and for L2) the map has the image's size, so no resampling: its spatial mean is d(x, y),
    the relative variant's division included."""
    layer = "relu1_1"
    kind = "_".join(kind.split("_"))  # an equal string, not the same object: as read from a config file
    d = (
        PerceptualDistance("l2")
        if kind == "l2"
        else PerceptualDistance(kind, vgg_sd(layer), layer, random_stats(64) if kind != "perceptual_l2" else None)
    )
    x, y = rand_images(seed=1), rand_images(seed=2)
    m = d.anomaly_map(x, y)
    assert m.shape == (4, 16, 16)
    assert torch.allclose(m.mean((1, 2)), d(x, y), rtol=1e-5)


def test_a_kind_read_from_text_is_compared_by_value():
    """A kind from a config file is an equal string, not the same object: L2 still needs no VGG."""
    d = PerceptualDistance("".join(["l", "2"]))
    assert d.uses_vgg is False and PerceptualDistance("perceptual_l2", vgg_sd(), LAYER).uses_vgg is True
    with pytest.raises(ValueError, match="uses no VGG: pass vgg_state_dict=None"):
        PerceptualDistance("".join(["l", "2"]), vgg_sd(), LAYER)


@pytest.mark.parametrize("which", ["mean", "std"])
@pytest.mark.parametrize("shape", [(1, 127, 1, 1), (1, 129, 1, 1), (128,), (1, 128)])
def test_feature_statistics_of_another_shape_are_refused_naming_both_shapes(which, shape):
    """(mean, std) of relu2_1 must each be (1, 128, 1, 1): fewer or more channels, or another layout, is refused
    (a smaller tuple as well as a larger one)."""
    mean, std = random_stats()
    wrong = torch.ones(shape)
    stats = (wrong, std) if which == "mean" else (mean, wrong)
    with pytest.raises(ValueError, match=r"must be \(mean, std\) of shape \(1, 128, 1, 1\)"):
        PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER, stats)


@pytest.mark.parametrize("channels", [2, 4])
def test_images_of_other_than_1_or_3_channels_are_refused(dist, channels):
    with pytest.raises(ValueError, match=f"1 or 3 channels, got shape \\(4, {channels}, 16, 16\\)"):
        dist(rand_images(c=channels), rand_images(c=channels))


def test_inputs_of_different_shapes_are_refused_whichever_is_larger(dist):
    small, large = rand_images(s=16), rand_images(s=32)
    for x, y in ((small, large), (large, small)):
        with pytest.raises(ValueError, match="x and y must have the same shape"):
            dist(x, y)


def test_the_relative_denominator_adds_eps_in_the_distance_and_in_the_map():
    """d = mean|f(x) - f(y)| / (mean|f(x)| + eps), with an eps large enough to matter; at relu2_1 the map is upsampled
    by 2 (bilinear, align_corners=False), which keeps the mean exactly, so the map's spatial mean is still d."""
    mean, std = random_stats()
    eps = 0.5
    d = PerceptualDistance("relative_perceptual_l1", vgg_sd(), LAYER, (mean, std), eps=eps)
    x, y = rand_images(seed=5), rand_images(seed=6)
    with torch.no_grad():
        fx, fy = d.features(x), d.features(y)
        expected = [float((fx[i] - fy[i]).abs().mean() / (fx[i].abs().mean() + eps)) for i in range(4)]
        got, m = d(x, y), d.anomaly_map(x, y)
    assert fx.shape[-1] * 2 == x.shape[-1] and m.shape == (4, 16, 16)
    assert got.tolist() == pytest.approx(expected, rel=1e-5)
    assert m.mean((1, 2)).tolist() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("layer", sorted(VGG_RELU_INDEX))
def test_the_features_end_on_the_named_relu_with_torchvisions_layers_before_it(layer):
    from torchvision.models.vgg import cfgs, make_layers

    from piad.model.perceptual import vgg19_features_upto

    mine, theirs = vgg19_features_upto(layer), make_layers(cfgs["E"])[: VGG_RELU_INDEX[layer] + 1]
    assert len(mine) == len(theirs) and isinstance(mine[-1], torch.nn.ReLU)
    for a, b in zip(mine, theirs, strict=True):
        assert type(a) is type(b) and repr(a).replace("inplace=True", "") == repr(b).replace("inplace=True", "")
