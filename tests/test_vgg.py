"""piad.model.vgg: the VGG-19 layout written once, checked layer by layer against torchvision's own `features`.

Fast (the network is built without weights): the first test file of vgg.py's mutation run.
"""

import functools

import pytest
import torch
from torchvision.models.vgg import cfgs, make_layers

from piad.errors import ConfigError
from piad.model import vgg


@functools.cache
def _net() -> torch.nn.Sequential:
    return make_layers(cfgs["E"])


@functools.cache
def _torchvision_relus() -> dict[str, tuple[int, int]]:
    """'relu<block>_<k>' -> (index of the ReLU module in torchvision's vgg19().features, channels of its output)."""
    out, block, k, channels = {}, 1, 0, 3
    for i, m in enumerate(_net()):
        if isinstance(m, torch.nn.MaxPool2d):
            block, k = block + 1, 0
        elif isinstance(m, torch.nn.Conv2d):
            channels = m.out_channels
        elif isinstance(m, torch.nn.ReLU):
            k += 1
            out[f"relu{block}_{k}"] = (i, channels)
    return out


def test_every_relu_name_points_past_its_relu_in_torchvisions_vgg19():
    want = _torchvision_relus()
    assert len(want) == 16 and list(vgg.VGG_RELU_INDEX) == list(want)  # relu1_1 ... relu5_4, in order
    assert vgg.VGG_RELU_INDEX == {name: i for name, (i, _) in want.items()}  # features[: index + 1] computes it


@pytest.mark.parametrize("layer", list(_torchvision_relus()))
def test_the_convs_and_channels_a_layer_needs(layer):
    net = _net()
    index = vgg.VGG_RELU_INDEX[layer]
    convs = [i for i, m in enumerate(net) if isinstance(m, torch.nn.Conv2d) and i < index]
    assert vgg.needed_convs(layer) == convs
    assert vgg.relu_channels(layer) == _torchvision_relus()[layer][1]
    x = torch.zeros(1, 3, 32, 32)
    assert net[: index + 1](x).shape[1] == vgg.relu_channels(layer)  # the ReLU's own output


@pytest.mark.parametrize("layer, key", [("relu1_1", "r11"), ("relu3_1", "r31"), ("relu4_2", "r42"), ("relu5_4", "r54")])
def test_stats_keys_are_the_authors_names(layer, key):
    assert vgg.stats_key(layer) == key


def test_every_distance_and_layer_is_accepted_and_anything_else_refused_by_name():
    for kind in vgg.DISTANCES:
        for layer in vgg.VGG_RELU_INDEX:
            vgg.check_distance_settings(kind, layer)
    assert vgg.DISTANCES == ("relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2")
    assert vgg.NORMALISED_DISTANCES == ("relative_perceptual_l1", "perceptual_l1")
    with pytest.raises(ConfigError, match=r"distance kind='l1' is unknown: expected one of \('relative_perceptual_l1'"):
        vgg.check_distance_settings("l1", "relu3_1")
    with pytest.raises(ConfigError, match=r"layer='relu6_1' is not a VGG-19 ReLU layer: expected one of \('relu1_1'"):
        vgg.check_distance_settings("l2", "relu6_1")
    with pytest.raises(ConfigError, match="layer='conv3_1'"):
        vgg.check_distance_settings("relative_perceptual_l1", "conv3_1")
