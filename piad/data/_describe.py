"""`piad data describe`: which source a benchmark is read from and how many images each split holds, per class."""

from __future__ import annotations

from collections import Counter


def describe(benchmark: str, normal_class: int | None = None, **source_kwargs) -> str:
    """Text for `piad data describe --benchmark NAME [--normal-class C]`.

    `source_kwargs` are load_benchmark's keywords (data_root, split_seed, download, image_size, channels). Every
    class is loaded (and cached) when `normal_class` is None.
    """
    from piad.data import PROTOCOLS, import_protocols, load_benchmark
    from piad.errors import DataError

    import_protocols()
    if benchmark not in PROTOCOLS:
        raise DataError(f"benchmark {benchmark!r} is unknown: expected one of {sorted(PROTOCOLS)}.")
    proto = PROTOCOLS[benchmark]
    classes = range(proto.num_classes) if normal_class is None else [normal_class]
    rows, sources, shape, groups_lines = [], [], None, []
    for c in classes:
        d = load_benchmark(benchmark, c, **source_kwargs)
        n = d.counts()
        rows.append((str(c), d.class_name or "", n["train"], n["test_normal"], n["test_anomalous"]))
        if d.source not in sources:
            sources.append(d.source)
        shape = tuple(d.train.shape[1:])
        if d.test_groups is not None:
            g = Counter(x for x in d.test_groups if x != "normal")
            if 1 < len(g) <= 12:
                groups_lines.append(f"  class {c}: " + ", ".join(f"{k}={v}" for k, v in sorted(g.items())))
    lines = [f"benchmark: {benchmark} - {proto.description}"]
    lines += [f"source: {s}" for s in sources]
    lines.append(f"images: {shape[0]} channel(s), {shape[1]}x{shape[2]}, float32 in [-1, 1]")
    if "split_seed" in source_kwargs:
        lines.append(f"split_seed: {source_kwargs['split_seed']}")
    head = ("class", "name", "train", "test_normal", "test_anomalous")
    width = [max(len(str(r[i])) for r in rows + [head]) for i in range(5)]
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(width))
    lines.append(fmt.format(*head))
    lines += [fmt.format(*r) for r in rows]
    if len(rows) > 1:
        lines.append(fmt.format("total", "", *(sum(r[i] for r in rows) for i in (2, 3, 4))))
    if groups_lines:
        lines.append("test anomalies per group:")
        lines += groups_lines
    return "\n".join(lines)
