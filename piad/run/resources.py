"""Where the perceptual network's weights and feature statistics come from.

Each `resolve_*` takes the user-facing spec ("imagenet", "random", a path, None) and returns tensors, or raises
:class:`ResourceError` naming the parameter and every way to fix it. Nothing here builds models or trains.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

import torch

from piad.errors import ResourceError
from piad.model.vgg import VGG19_CONVS, needed_convs, stats_key
from piad.paths import cache_dir, display_path  # noqa: F401  (cache_dir re-exported)

# The authors' ImageNet statistics of torchvision VGG-19 features (../shared/assets/README.md).
IMAGENET_STATS_URL = (
    "https://github.com/ninatu/piad/raw/adcb8fa9f5b3d64f35a3ecfca671f2ac6fcd4df6/"
    "piad/data/vgg19_ILSVRC2012_object_detection_mean_var.pt"
)
IMAGENET_STATS_SHA256 = "f0c8f0ce94a9239176103a71ad457af705721530889eb5cc9e77dfc73b01b38c"
IMAGENET_STATS_FILENAME = "vgg19_ILSVRC2012_object_detection_mean_var.pt"


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _load_tensor_file(path, param: str):
    p = Path(path)
    if not p.is_file():
        named = "'imagenet', 'random'" if param == "vgg_weights" else "'imagenet', None"
        raise ResourceError(
            f"{param}={str(path)!r}: no such file. Pass an existing file path, or one of the named choices ({named})."
        )
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except OSError as e:
        from piad.run.checkpoint import IO_FAULT_ERRNOS

        if e.errno in IO_FAULT_ERRNOS:
            from piad.errors import os_error

            raise os_error(e, p, "read") from None
        raise _not_tensors(path, param, e) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise _not_tensors(path, param, e) from None


def _not_tensors(path, param: str, e: BaseException) -> ResourceError:
    """One line naming the file; never torch's text (it advises weights_only=False, which would run the file's code)."""
    from piad.run.checkpoint import unsafe_load_reason

    return ResourceError(
        f"{param}={str(path)!r} could not be read as a tensor file: {unsafe_load_reason(e)}. Use a complete file "
        "saved with torch.save (tensors only)."
    )


def resolve_vgg_state_dict(spec: str, layer: str, seed: int = 0) -> tuple[dict[str, torch.Tensor], str]:
    """State dict of `vgg19().features` up to `layer` (keys like '0.weight'), and a description of its source."""
    needed = needed_convs(layer)
    if spec == "random":
        g = torch.Generator().manual_seed(seed)
        sd = {}
        for i in needed:
            cin, cout = VGG19_CONVS[i]
            # torchvision's VGG init: kaiming_normal_(fan_out, relu), zero bias
            std = (2.0 / (cout * 9)) ** 0.5
            sd[f"{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
            sd[f"{i}.bias"] = torch.zeros(cout)
        return sd, f"random (seed {seed}; NOT ImageNet weights: results are illustrations only)"
    if spec == "imagenet":
        try:
            from torchvision.models import VGG19_Weights

            full = VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=False, check_hash=True)
        except Exception as e:  # noqa: BLE001 - network errors come in many types
            raise ResourceError(
                f"vgg_weights='imagenet': torchvision's VGG19_Weights.IMAGENET1K_V1 could not be loaded ({e}). "
                "Fixes: go online once so torchvision downloads and caches it (under $TORCH_HOME/hub/checkpoints); "
                "or pass vgg_weights=<path to a torchvision vgg19 state dict>; or vgg_weights='random' for a "
                "labelled demo."
            ) from None
        sd, source = full, "torchvision VGG19_Weights.IMAGENET1K_V1"
    else:
        sd, source = _load_tensor_file(spec, "vgg_weights"), f"file {display_path(spec)}"
        if not isinstance(sd, dict):
            raise ResourceError(f"vgg_weights={spec!r} does not hold a state dict (got {type(sd).__name__}).")
    # accept 'features.N.weight' (full vgg19) and 'N.weight' (vgg19().features)
    sd = {k[len("features.") :] if k.startswith("features.") else k: v for k, v in sd.items()}
    out = {}
    for i in needed:
        cin, cout = VGG19_CONVS[i]
        for name, shape in (("weight", (cout, cin, 3, 3)), ("bias", (cout,))):
            key = f"{i}.{name}"
            if key not in sd:
                raise ResourceError(
                    f"vgg_weights={spec!r} has no tensor {key!r}, needed for layer={layer!r} (it needs conv layers "
                    f"{needed} of vgg19().features). Choose a shallower layer or a complete VGG-19 file."
                )
            if tuple(sd[key].shape) != shape:
                raise ResourceError(
                    f"vgg_weights={spec!r}: tensor {key!r} has shape {tuple(sd[key].shape)}, "
                    f"expected {shape} (torchvision vgg19 layout)."
                )
            out[key] = sd[key].float()
    return out, source


def _download_stats() -> Path:
    target = cache_dir() / IMAGENET_STATS_FILENAME
    if target.is_file() and sha256_of(target) == IMAGENET_STATS_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(IMAGENET_STATS_URL, timeout=30) as r:
            shutil.copyfileobj(r, f)
        digest = sha256_of(tmp)
        if digest != IMAGENET_STATS_SHA256:
            raise ResourceError(
                f"feature_stats='imagenet': the downloaded file has sha256 {digest}, expected "
                f"{IMAGENET_STATS_SHA256}. Download it by hand and pass its path."
            )
        os.replace(tmp, target)
        return target
    except ResourceError:
        raise
    except Exception as e:  # noqa: BLE001 - offline, DNS, HTTP errors
        raise ResourceError(
            f"feature_stats='imagenet': the authors' ImageNet statistics are not cached at {target} and could not "
            f"be downloaded ({e}). Fixes: go online once; or copy the file (sha256 {IMAGENET_STATS_SHA256}) to "
            f"{target}; or pass feature_stats=<path>; or compute your own with `piad feature-stats`; or "
            "feature_stats=None for no normalisation."
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_feature_stats(
    spec: str | None, layer: str, channels: int
) -> tuple[tuple[torch.Tensor, torch.Tensor] | None, str]:
    """(mean, std) of shape (1, C, 1, 1) for `layer`, or None for no normalisation, and a source description."""
    if spec is None or spec == "none":
        return None, "none"
    path = _download_stats() if spec == "imagenet" else Path(spec)
    data = _load_tensor_file(path, "feature_stats")
    key = stats_key(layer)
    if not isinstance(data, dict) or key not in data:
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ResourceError(
            f"feature_stats={spec!r} has no statistics for layer {layer!r} (key {key!r}); it has "
            f"{have}. Compute them with `piad feature-stats --layer {layer}`."
        )
    try:
        mean, std = (torch.as_tensor(t).float() for t in data[key])
    except (TypeError, ValueError):
        raise ResourceError(f"feature_stats={spec!r}: entry {key!r} must be a (mean, std) pair.") from None
    for name, t in (("mean", mean), ("std", std)):
        if tuple(t.shape) != (1, channels, 1, 1):
            raise ResourceError(
                f"feature_stats={spec!r}: {key!r} {name} has shape {tuple(t.shape)}, expected "
                f"(1, {channels}, 1, 1) for layer {layer!r}."
            )
    if not torch.all(std > 0):
        raise ResourceError(f"feature_stats={spec!r}: {key!r} std has non-positive entries; statistics unusable.")
    source = "authors' ImageNet statistics" if spec == "imagenet" else f"file {display_path(spec)}"
    return (mean, std), source
