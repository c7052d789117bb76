"""scikit-learn's embedded `load_digits` (1,797 real 8x8 digits): the always-available offline benchmark.

Protocol (as Fashion-MNIST's): per class a seeded 80/20 split; train = 80% of the normal class, test = 20% of the
normal class + the 20% parts of all other classes. Images are upsampled 8 -> 32 (bilinear).
"""

from __future__ import annotations

import numpy as np
import torch

from piad.data import OneClassData, register
from piad.data._util import match_channels, resize, seeded_split, to_unit_range


@register("digits", num_classes=10, description="scikit-learn load_digits, 8x8 upsampled, seeded 80/20 split")
def load_digits_protocol(
    normal_class: int, *, data_root=None, split_seed: int = 0, download: bool = True, image_size=None, channels=None
) -> OneClassData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = to_unit_range(torch.from_numpy(d.images.astype(np.float32))[:, None], 16.0)
    images = match_channels(resize(images, image_size or 32), channels or 1).contiguous()
    labels = d.target
    train_idx, test_idx = [], []
    for c in range(10):
        idx = np.flatnonzero(labels == c)
        a, b = seeded_split(len(idx), 0.8, split_seed, salt=c)
        train_idx.append(idx[a]) if c == normal_class else None
        test_idx.append(idx[b])
    test_idx = np.concatenate(test_idx)
    test_labels = torch.from_numpy((labels[test_idx] != normal_class).astype(np.int64))
    return OneClassData(
        "digits",
        normal_class,
        images[np.concatenate(train_idx)],
        images[test_idx],
        test_labels,
        source="scikit-learn load_digits (embedded copy)",
        test_groups=[str(c) if c != normal_class else "normal" for c in labels[test_idx]],
        class_name=str(normal_class),
    )
