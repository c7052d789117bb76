"""Natural-image crops from scikit-image's bundled photographs: images outside every benchmark, for feature statistics
that no benchmark's anomalous classes (or test split) shape (book: Experiments > Datasets, leak-free statistics).

Each crop is a seeded random square of a photograph taken at a random scale (the photograph downscaled by 1, 2, 4 or
8 with area averaging), resized to `size` pixels, RGB in [-1, 1] (grey photographs repeated over the channels).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# scikit-image's photographs that ship with the package (no download): colour, then grey
PHOTOGRAPHS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "camera", "coins", "horse", "moon", "grass", "gravel", "brick", "clock",
)  # fmt: skip
SCALES = (1, 2, 4, 8)


def photographs() -> list[torch.Tensor]:
    """Every photograph as a float tensor [3, H, W] in [0, 1]."""
    import skimage.data

    out = []
    for name in PHOTOGRAPHS:
        a = np.asarray(getattr(skimage.data, name)())
        a = a.astype(np.float32) / (255.0 if a.dtype == np.uint8 else max(float(a.max()), 1.0))
        t = torch.from_numpy(a)
        t = t[None].expand(3, -1, -1) if t.dim() == 2 else t[..., :3].permute(2, 0, 1)
        out.append(t.contiguous())
    return out


def natural_crops(n: int = 5000, size: int = 32, seed: int = 0) -> torch.Tensor:
    """`n` crops [n, 3, size, size] in [-1, 1], the same for the same (n, size, seed)."""
    if n < 1 or size < 1:
        raise ValueError(f"natural_crops: n={n} and size={size} must be positive")
    g = torch.Generator().manual_seed(seed)
    photos = photographs()
    pyramids = [[F.avg_pool2d(p[None], s)[0] if s > 1 else p for s in SCALES] for p in photos]
    crops = torch.empty(n, 3, size, size)
    for i in range(n):
        p = int(torch.randint(len(photos), (1,), generator=g))
        img = pyramids[p][int(torch.randint(len(SCALES), (1,), generator=g))]
        h, w = img.shape[1:]
        side = min(h, w, max(size, int(torch.randint(size, 2 * size + 1, (1,), generator=g))))
        y = int(torch.randint(h - side + 1, (1,), generator=g))
        x = int(torch.randint(w - side + 1, (1,), generator=g))
        patch = img[:, y : y + side, x : x + side][None]
        if side != size:
            patch = F.interpolate(patch, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        crops[i] = patch[0]
    return (crops.clamp(0, 1) * 2 - 1).contiguous()
