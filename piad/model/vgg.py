"""The VGG-19 layout and the distance kinds, written once, as plain Python (configs import this without torch).

Layer indices are those of torchvision's `vgg19().features`; ReLU layers are named as in the paper's code
(book: Method > Relative-perceptual-L1, spec-rpl1).
"""

from __future__ import annotations

from piad.errors import ConfigError

# reconstruction distances (book: Method > Relative-perceptual-L1, spec-ablation-distances)
DISTANCES = ("relative_perceptual_l1", "perceptual_l1", "perceptual_l2", "l2")
NORMALISED_DISTANCES = ("relative_perceptual_l1", "perceptual_l1")  # compare standardised features f = (phi-mu)/sigma

# torchvision's VGG-19 `features` (configuration "E"): output channels of each 3x3 conv, "M" for a 2x2 max-pool.
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _walk_layout() -> tuple[dict[int, tuple[int, int]], dict[str, int]]:
    convs, relus = {}, {}
    index, cin, block, k = 0, 3, 1, 0
    for v in VGG19_LAYOUT:
        if v == "M":
            index, block, k = index + 1, block + 1, 0
            continue
        k += 1
        convs[index] = (cin, v)
        relus[f"relu{block}_{k}"] = index + 1
        index, cin = index + 2, v
    return convs, relus


# conv index -> (in, out) channels; ReLU name ('relu1_1' ... 'relu5_4') -> index of its output in `features`
VGG19_CONVS, VGG_RELU_INDEX = _walk_layout()


def check_distance_settings(kind: str, layer: str) -> None:
    """Raise ConfigError unless `kind` is a known distance and `layer` a VGG-19 ReLU layer."""
    if kind not in DISTANCES:
        raise ConfigError(f"distance kind={kind!r} is unknown: expected one of {DISTANCES}.")
    if layer not in VGG_RELU_INDEX:
        raise ConfigError(f"layer={layer!r} is not a VGG-19 ReLU layer: expected one of {tuple(VGG_RELU_INDEX)}.")


def needed_convs(layer: str) -> list[int]:
    """Indices of the conv layers that compute `layer`."""
    return [i for i in VGG19_CONVS if i < VGG_RELU_INDEX[layer]]


def relu_channels(layer: str) -> int:
    """Channels of the features at `layer`."""
    return VGG19_CONVS[VGG_RELU_INDEX[layer] - 1][1]


def stats_key(layer: str) -> str:
    """'relu4_2' -> 'r42', the key used in the authors' statistics file."""
    block, idx = layer[len("relu") :].split("_")
    return f"r{block}{idx}"
