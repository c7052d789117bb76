"""Reading raw sources: IDX files, image files (decoded in parallel), safe archive extraction.

Every image goes through :func:`decode_image`: PIL decode -> mode conversion -> optional centre crop -> bilinear
(antialiased) resize, giving uint8 (S, S, C). This is what torchvision's `CenterCrop` / `Resize` do on PIL images in
the authors' pipelines, and uint8 keeps the disk cache 4x smaller than float32. COIL-100 is resized instead with
scikit-image, as the authors did (`resample="skimage"`, :func:`skimage_rescale`).
"""

from __future__ import annotations

import gzip
import io
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path, PurePosixPath

import numpy as np

from piad.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".tar", ".zip")

# Parallel decoding pays off only for many images; below this a single process is faster than forking.
_PARALLEL_MIN = 4000
_CHUNK = 1000


# ---------------------------------------------------------------------------------------------------------- names
def natural_key(s: str):
    """Sort key with numbers compared as numbers: obj2 < obj10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def is_image_file(p: str | Path) -> bool:
    name = str(p).lower()
    return name.endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def is_archive(p: str | Path) -> bool:
    return str(p).lower().endswith(ARCHIVE_SUFFIXES) and Path(p).is_file()


def list_images(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (optionally below it), in natural order of their relative paths."""
    if recursive:
        files = [Path(dp) / f for dp, dns, fns in os.walk(folder) for f in fns if is_image_file(f)]
        for_sort = {p: str(p.relative_to(folder)) for p in files}
        return sorted(files, key=lambda p: natural_key(for_sort[p]))
    with os.scandir(folder) as it:
        files = [Path(e.path) for e in it if is_image_file(e.name) and e.is_file()]
    return sorted(files, key=lambda p: natural_key(p.name))


# ------------------------------------------------------------------------------------------------------------ IDX
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format), gzipped or not, as a numpy array."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(
            f"IDX file {path} could not be read ({e}). Replace it with a complete copy "
            "(e.g. re-download it or delete it so it is downloaded again)."
        ) from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file (bad magic number {data[:4].hex()}); expected the MNIST/"
            "Fashion-MNIST format (e.g. train-images-idx3-ubyte[.gz])."
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - offset != expected:
        raise DataError(
            f"IDX file {path} is truncated or corrupt: header says shape {dims} ({expected} bytes of "
            f"data), the file has {len(data) - offset}. Replace it with a complete copy."
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)


# --------------------------------------------------------------------------------------------------------- images
def to_mode(img, channels: int):
    """A PIL image in mode "L" (channels=1) or "RGB" (16-bit and float images scaled to 8 bits)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    return img.convert("L") if channels == 1 else img.convert("RGB")


def center_crop(img, crop: int):
    """torchvision's CenterCrop on a PIL image (pads with zeros where the crop exceeds the image)."""
    w, h = img.size
    left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
    return img.crop((left, top, left + crop, top + crop))


def skimage_rescale(a: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W[, C]) -> uint8 (size, size[, C]) as the authors' COIL-100 preprocessing (book: Datasets):
    `(skimage.transform.rescale(img, (0.25, 0.25, 1)) * 255).astype(np.uint8)`, i.e. scikit-image's resize with
    its defaults (float in [0, 1], a Gaussian anti-aliasing blur when downscaling, bilinear, mode "reflect"), then a
    truncation (not a rounding) to uint8. For 128 -> 32 this is exactly their `rescale(..., 0.25)` call."""
    try:
        from skimage.transform import resize
    except ImportError:
        raise DataError(
            "the COIL-100 preprocessing needs scikit-image (the authors' resize); install it with "
            "`pip install scikit-image`."
        ) from None
    out = resize(a, (size, size) + a.shape[2:], order=1, mode="reflect", anti_aliasing=size < max(a.shape[:2]))
    return (out * 255).astype(np.uint8)


def open_regular_file(path, label: str | None = None):
    """`path` opened for reading as a binary file object, if it is a regular file (after following links).

    A FIFO, socket or device named like an image is never read (opening a FIFO for reading would wait forever for a
    writer): DataError naming it. Other failures (missing, unreadable, a link loop) are DataErrors too."""
    import errno as _errno
    import stat as _stat

    label = label or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as e:
        why = "a loop of symbolic links" if e.errno == _errno.ELOOP else (e.strerror or type(e).__name__)
        raise DataError(f"image file {label} could not be opened ({why}). Remove the file or fix its path.") from None
    try:
        mode = os.fstat(fd).st_mode
        if not _stat.S_ISREG(mode):
            kind = (
                "a FIFO (named pipe)"
                if _stat.S_ISFIFO(mode)
                else "a socket"
                if _stat.S_ISSOCK(mode)
                else "a device"
                if _stat.S_ISCHR(mode) or _stat.S_ISBLK(mode)
                else "a folder"
                if _stat.S_ISDIR(mode)
                else "not a regular file"
            )
            raise DataError(
                f"image file {label} is {kind}, not a regular file; only regular files are read as images. "
                "Remove it or replace it with the image file."
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def too_large(label: str, pixels: int | None = None) -> DataError:
    from PIL import Image

    has = f" ({pixels:,} pixels)" if pixels else ""
    return DataError(
        f"image file {label} is too large to decode safely{has}: the limit is {Image.MAX_IMAGE_PIXELS:,} pixels. "
        "Resize it below that, or remove it."
    )


def open_image(src, label: str):
    """A loaded PIL image from a path (regular files only: :func:`open_regular_file`) or encoded bytes. Images of
    more than PIL's MAX_IMAGE_PIXELS are refused before they are decoded (DataError, no warning printed)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    f = None
    try:
        f = open_regular_file(src, label) if isinstance(src, (str, Path)) else io.BytesIO(src)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(f)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        if f is not None:
            f.close()
        raise too_large(label) from None
    except DataError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError) as e:
        if f is not None:
            f.close()
        raise DataError(
            f"image file {label} could not be read ({type(e).__name__}: {e}). Delete or replace the "
            "file (it may be truncated or not an image)."
        ) from None
    if f is not None:
        f.close()
    return img


def decode_image(
    src: str | Path | bytes | np.ndarray,
    size: int,
    channels: int,
    crop: None | int | str = None,
    name: str | None = None,
    resample: str = "pil",
) -> np.ndarray:
    """One image -> uint8 (size, size, channels). `crop`: None, an int (centre crop), or "square" (largest centred
    square). `src` is a path, encoded bytes, or a uint8 array (H, W) / (H, W, C). `resample`: "pil" (PIL's bilinear,
    as torchvision's `Resize`) or "skimage" (:func:`skimage_rescale`); images already of the size are kept as they
    are. Only regular files are read, and images of more than PIL's MAX_IMAGE_PIXELS are refused (DataError)."""
    from PIL import Image

    label = name or (str(src) if isinstance(src, (str, Path)) else "<in-memory image>")
    if isinstance(src, np.ndarray):
        try:
            img = Image.fromarray(src)
        except (TypeError, ValueError) as e:
            raise DataError(f"image {label} could not be converted ({e}).") from None
    else:
        img = open_image(src, label)
    img = to_mode(img, channels)
    if crop == "square":
        crop = min(img.size)
    if crop is not None:
        img = center_crop(img, int(crop))
    if img.size != (size, size) and resample == "skimage":
        a = skimage_rescale(np.asarray(img, dtype=np.uint8), size)
    else:
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        a = np.asarray(img, dtype=np.uint8)
    return a[:, :, None] if a.ndim == 2 else a


def _decode_chunk(items: list, size: int, channels: int, crop, resample: str) -> np.ndarray:
    out = np.empty((len(items), size, size, channels), dtype=np.uint8)
    for i, (name, src) in enumerate(items):
        out[i] = decode_image(src, size, channels, crop, name=name, resample=resample)
    return out


def _chunks(items: Iterable, n: int):
    buf = []
    for it in items:
        buf.append(it)
        if len(buf) == n:
            yield buf
            buf = []
    if buf:
        yield buf


def _workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def decode_many(
    items: Iterable[tuple[str, str | bytes | np.ndarray]],
    size: int,
    channels: int,
    crop=None,
    count: int | None = None,
    resample: str = "pil",
) -> np.ndarray:
    """Decode (name, path-or-bytes-or-array) items -> uint8 (N, C, S, S), in parallel when there are many.

    `items` may be a generator (e.g. an lmdb cursor); at most a few chunks are held in memory at once. `crop`,
    `resample`: as in :func:`decode_image`."""
    if resample not in ("pil", "skimage"):
        raise ValueError(f"resample must be 'pil' or 'skimage', got {resample!r}")
    fn = partial(_decode_chunk, size=size, channels=channels, crop=crop, resample=resample)
    workers = _workers()
    results: list[np.ndarray] = []
    if workers == 1 or (count is not None and count < _PARALLEL_MIN):
        for chunk in _chunks(items, _CHUNK):
            results.append(fn(chunk))
    else:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as ex:
            pending = []
            for chunk in _chunks(items, _CHUNK):
                pending.append(ex.submit(fn, chunk))
                if len(pending) >= 4 * workers:  # bounded memory for huge streams (LSUN)
                    results.append(pending.pop(0).result())
            results.extend(f.result() for f in pending)
    if not results:
        return np.empty((0, channels, size, size), dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate(results).transpose(0, 3, 1, 2))


def pil_resize_grey(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """uint8 grey (N, H, W) -> uint8 (N, C, S, S) with PIL's bilinear resize, image by image: exactly what the
    authors' `transforms.Resize(S)` does to an MNIST / Fashion-MNIST PIL image (book: Datasets). PIL computes in
    fixed point, so torch's resize differs from it by one grey level on a few percent of pixels."""
    from PIL import Image

    if images.ndim != 3:
        raise DataError(f"expected grey images of shape (N, H, W), got {images.shape}.")
    out = np.empty((len(images), 1, size, size), dtype=np.uint8)
    for i, a in enumerate(images):
        img = Image.fromarray(np.ascontiguousarray(a))
        out[i, 0] = np.asarray(img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR))
    return np.ascontiguousarray(np.repeat(out, channels, axis=1)) if channels != 1 else out


def convert_arrays(images: np.ndarray, size: int, channels: int, batch: int = 8192) -> np.ndarray:
    """uint8 (N, H, W) or (N, H, W, C) arrays -> uint8 (N, C, S, S): channel conversion as PIL's (L = 0.299 R +
    0.587 G + 0.114 B; grey -> RGB by repetition) and an antialiased bilinear resize (torch's, which follows PIL's
    filter), rounded to uint8. Done in batches with torch: much faster than a PIL call per image."""
    import torch
    import torch.nn.functional as F

    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    out = np.empty((n, channels, size, size), dtype=np.uint8)
    for s in range(0, n, batch):
        x = torch.from_numpy(np.array(images[s : s + batch])).permute(0, 3, 1, 2)
        if c == 3 and channels == 1:
            wts = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            x = (x.float() * wts).sum(1, keepdim=True).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
        elif c == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif c != channels:
            raise DataError(f"cannot convert {c}-channel images to {channels} channels (expected 1 or 3).")
        if (h, w) != (size, size):
            x = (
                F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
                .round_()
                .clamp_(0, 255)
                .to(torch.uint8)
            )
        out[s : s + batch] = x.numpy()
    return out


# ------------------------------------------------------------------------------------------------------- archives
def _check_member_path(archive: Path, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        raise DataError(
            f"archive {archive} contains an unsafe member path {name!r} (absolute or with '..'); it "
            "was not extracted. Use an archive whose members are relative paths inside it."
        )


def _safe_link_target(archive: Path, name: str, linkname: str, symbolic: bool) -> PurePosixPath:
    """The link's target relative to the extraction folder; DataError if it points outside."""
    base = PurePosixPath(name.replace("\\", "/")).parent if symbolic else PurePosixPath(".")
    target = PurePosixPath(linkname.replace("\\", "/"))
    parts: list[str] = []
    ok = not target.is_absolute()
    for part in (base / target).parts if ok else ():
        if part == "..":
            if not parts:
                ok = False
                break
            parts.pop()
        elif part != ".":
            parts.append(part)
    if not ok:
        raise DataError(
            f"archive {archive} contains a link {name!r} -> {linkname!r} pointing outside the "
            "extraction folder; it was not extracted. Use an archive without such links."
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _extract_tar(archive: Path, dest: Path) -> None:
    """Stream a tar archive into `dest` (one pass), checking every member before writing it.

    Regular files and folders are written; links are checked and materialised as copies of their (already
    extracted) targets; devices and fifos are skipped. Permissions and times are not restored."""
    made: set[str] = set()
    root = str(dest)
    with tarfile.open(archive, mode="r|*") as tf:
        for m in tf:
            _check_member_path(archive, m.name)
            rel = "/".join(p for p in m.name.replace("\\", "/").split("/") if p not in ("", "."))
            out = os.path.join(root, rel) if rel else root
            if m.isdir():
                os.makedirs(out, exist_ok=True)
            elif m.isfile():
                parent = os.path.dirname(out)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                with open(out, "wb") as f:
                    f.write(tf.extractfile(m).read())
            elif m.issym() or m.islnk():
                target = dest / _safe_link_target(archive, m.name, m.linkname, m.issym())
                if target.is_file():
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    shutil.copyfile(target, out)


def extraction_dir(archive: Path) -> Path:
    from piad.data._cache import data_cache_dir, fingerprint_file, short_hash

    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", archive.name)
    return data_cache_dir() / "extracted" / f"{stem}-{short_hash(fingerprint_file(archive))}"


def extract_archive(archive: Path) -> Path:
    """Extract a .tar[.gz|.bz2|.xz] or .zip safely into the cache (once); return the extraction folder.

    Members with absolute paths or '..', and links pointing outside, raise DataError before anything is written."""
    archive = Path(archive).resolve()
    target = extraction_dir(archive)
    if (target / ".piad-complete").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".extract-"))
    try:
        name = archive.name.lower()
        try:
            if name.endswith(".zip"):
                with zipfile.ZipFile(archive) as zf:
                    infos = zf.infolist()
                    for info in infos:
                        _check_member_path(archive, info.filename)
                        mode = info.external_attr >> 16
                        if stat.S_ISLNK(mode):
                            raise DataError(
                                f"archive {archive} contains a symbolic link {info.filename!r}; links "
                                "are not extracted from zip archives. Use an archive without links."
                            )
                    zf.extractall(tmp, members=infos)
            else:
                _extract_tar(archive, tmp)
        except DataError:
            raise
        except (OSError, EOFError, tarfile.TarError, zipfile.BadZipFile) as e:
            raise DataError(
                f"archive {archive} could not be extracted ({type(e).__name__}: {e}). Check that it is "
                "complete and a .tar(.gz/.bz2/.xz) or .zip file."
            ) from None
        (tmp / ".piad-complete").write_text(str(archive))
        os.chmod(tmp, 0o755)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / ".piad-complete").is_file():  # a half-written leftover, not a concurrent winner
                shutil.rmtree(target, ignore_errors=True)
                os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
