"""The registered dataset sources.

Each loader returns the *standard* split of its dataset as uint8 NCHW tensors. Files are read from
``root`` (the CLI's ``--data-root``); where a dataset can be downloaded, ``download=True`` lets
torchvision fetch it. A missing file raises one :class:`DatasetError` that says where to put the
files and how to download them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import tarfile
import zlib
from pathlib import Path

import numpy as np
import torch

from unlearnbench.tempfiles import clean_dead_temporaries, temp_tag

from .base import DatasetError, ImageSet, SourceData, cache_dir, register_source

# --------------------------------------------------------------------------------------- digits


@register_source("digits", description="scikit-learn's bundled 8x8 handwritten digits (1,797 images); "
                 "the embedded default, no files needed", default_heldout=150, needs_files=False)
def load_digits(root: Path | None = None, download: bool = False) -> SourceData:
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    # pixel values are 0..16: rescale to 0..255 so every source shares one uint8 convention
    x = torch.from_numpy(np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    # No standard split exists; the standard one here is a fixed stratified 80/20 split (seed 0).
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=bunch.target)
    tr, te = torch.from_numpy(np.sort(tr)), torch.from_numpy(np.sort(te))
    return SourceData("digits", ImageSet(x[tr], y[tr]), ImageSet(x[te], y[te]),
                      tuple(str(i) for i in range(10)), provenance="sklearn.datasets.load_digits, 80/20 stratified split (seed 0)")


# ------------------------------------------------------------------------------ MNIST family

_IDX_FILES = {
    "train_x": "train-images-idx3-ubyte", "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte", "test_y": "t10k-labels-idx1-ubyte",
}
_MNIST_FAMILY = {
    # name: (torchvision class, torchvision folder, flat-folder names, class names)
    "mnist": ("MNIST", "MNIST", ("mnist", "MNIST"), tuple(str(i) for i in range(10))),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST", ("fashion-mnist", "fashion_mnist", "FashionMNIST"),
                      ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot")),
    "kmnist": ("KMNIST", "KMNIST", ("kmnist", "KMNIST"), ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")),
}


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (gzipped or not): magic, dims, then big-endian unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DatasetError(f"{path} is not a readable gzip file ({type(exc).__name__}: {exc}; truncated or "
                           "damaged): re-download it") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes (bad magic number); re-download it")
    ndim = data[3]
    if not 1 <= ndim <= 4 or len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path} has a damaged IDX header ({ndim} dimensions): re-download it")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DatasetError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {body.size}")
    return body.reshape(dims)


def _find_idx(root: Path, folders: list[Path], stem: str) -> Path | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _mnist_family(name: str, root: Path | None, download: bool) -> SourceData:
    tv_class, tv_folder, flat_names, classes = _MNIST_FAMILY[name]
    if root is None:
        raise DatasetError(f"dataset {name!r} needs --data-root: point it at a folder holding the four IDX files "
                           f"({', '.join(_IDX_FILES.values())}, gzipped or not), either flat, in "
                           f"<root>/{flat_names[0]}/ or in torchvision's <root>/{tv_folder}/raw/")
    root = Path(root)
    folders = [root / tv_folder / "raw", *(root / n for n in flat_names), root]
    found = {k: _find_idx(root, folders, stem) for k, stem in _IDX_FILES.items()}
    if any(v is None for v in found.values()) and download:
        import torchvision

        try:
            getattr(torchvision.datasets, tv_class)(str(root), train=True, download=True)
            getattr(torchvision.datasets, tv_class)(str(root), train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise DatasetError(f"could not download {name!r} into {root}: {exc}. Without network access, copy the "
                               f"four IDX files into {root / tv_folder / 'raw'}") from exc
        found = {k: _find_idx(root, folders, stem) for k, stem in _IDX_FILES.items()}
    missing = [_IDX_FILES[k] for k, v in found.items() if v is None]
    if missing:
        raise DatasetError(
            f"dataset {name!r}: missing {', '.join(missing)} (.gz or not) under {root}. Put the four IDX files in "
            f"{root / flat_names[0]} or {root / tv_folder / 'raw'}, or pass --download to let torchvision fetch them."
        )
    arrays = {k: read_idx(p) for k, p in found.items()}  # type: ignore[arg-type]
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DatasetError(f"dataset {name!r}: {found[part + '_x']} ({'x'.join(map(str, x.shape))}) and "
                               f"{found[part + '_y']} ({'x'.join(map(str, y.shape))}) are not {part} images [N, H, W] "
                               "with N labels: a file is swapped or damaged; re-download them")
    train = ImageSet(torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
                     torch.from_numpy(arrays["train_y"].astype(np.int64)))
    test = ImageSet(torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
                    torch.from_numpy(arrays["test_y"].astype(np.int64)))
    return SourceData(name, train, test, classes, provenance=f"IDX files from {found['train_x'].parent.name}/")


for _name in _MNIST_FAMILY:
    register_source(_name, description=f"{_name} (IDX files from --data-root; torchvision download with --download)",
                    default_heldout=5000)(lambda root=None, download=False, _n=_name: _mnist_family(_n, root, download))


# ------------------------------------------------------------------- torchvision colour sets


def _torchvision_set(name: str, root: Path | None, download: bool) -> SourceData:
    import torchvision

    if root is None:
        raise DatasetError(f"dataset {name!r} needs --data-root (torchvision's root folder); add --download to fetch "
                           "it there when the machine has network access")
    root = Path(root)
    try:
        if name == "svhn":
            parts = [torchvision.datasets.SVHN(str(root), split=s, download=download) for s in ("train", "test")]
            xs = [torch.from_numpy(p.data) for p in parts]  # already NCHW
            ys = [torch.from_numpy(np.asarray(p.labels, dtype=np.int64)) for p in parts]
            classes = tuple(str(i) for i in range(10))
        else:
            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
            parts = [cls(str(root), train=t, download=download) for t in (True, False)]
            xs = [torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous() for p in parts]
            ys = [torch.tensor(p.targets, dtype=torch.int64) for p in parts]
            classes = tuple(parts[0].classes)
    except RuntimeError as exc:
        folder = {"svhn": "train_32x32.mat / test_32x32.mat", "cifar10": "cifar-10-batches-py/",
                  "cifar100": "cifar-100-python/"}[name]
        raise DatasetError(f"dataset {name!r} not found under {root} ({folder}): pass --download on a machine with "
                           f"network access, or copy torchvision's files there. ({exc})") from exc
    return SourceData(name, ImageSet(xs[0], ys[0]), ImageSet(xs[1], ys[1]), classes, augment="crop_flip",
                      provenance=f"torchvision.datasets ({name})")


for _name in ("cifar10", "cifar100", "svhn"):
    register_source(_name, description=f"{_name} through torchvision (--data-root, --download)",
                    default_heldout=5000)(lambda root=None, download=False, _n=_name: _torchvision_set(_n, root, download))


# ------------------------------------------------------------------------ JPEG CIFAR-10 / image folders

_JPEG_MD5 = "980e733e6ad09fbc7f961e2eecafcdad"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}


def _decode(read, paths: list[str], where: str) -> np.ndarray:
    """Decode images (``read(path) -> bytes``) to uint8 NCHW on a thread pool (PIL decodes without the GIL)."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(rel: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(read(rel))) as im:
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data, ...
            if isinstance(exc, OSError) and exc.errno is not None:
                raise
            raise DatasetError(f"{where}: {rel} is not a readable image ({type(exc).__name__}: {exc}): replace or "
                               "remove it") from exc

    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(one, paths, chunksize=256))
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise DatasetError(f"images under {where} have different sizes {sorted(shapes)[:3]}; resize them first")
    return np.stack(images).transpose(0, 3, 1, 2).copy()


def _class_listing(names: list[str], classes: list[str], prefix: str = "") -> tuple[list[str], list[int]]:
    """Paths ``<prefix><class>/<file>`` sorted by class then file name, with their labels."""
    paths, labels = [], []
    for label, cls in enumerate(classes):
        head = f"{prefix}{cls}/"
        for name in sorted(n for n in names if n.startswith(head) and Path(n).suffix.lower() in _IMAGE_SUFFIXES):
            paths.append(name)
            labels.append(label)
    return paths, labels


def _decode_folder(folder: Path, classes: list[str]) -> tuple[np.ndarray, list[int]]:
    """Decode an ImageFolder split (``folder/<class>/*``), class folders in the given order."""
    names = [str(p.relative_to(folder)) for cls in classes if (folder / cls).is_dir() for p in (folder / cls).iterdir()]
    paths, labels = _class_listing(names, classes)
    return _decode(lambda rel: (folder / rel).read_bytes(), paths, str(folder)), labels


def _atomic_save_npy(path: Path, arr: np.ndarray) -> None:
    clean_dead_temporaries(path.parent)  # a killed writer's; the cache is shared by concurrent runs
    tmp = path.with_name(path.stem + temp_tag() + path.suffix)
    np.save(tmp, arr)
    os.replace(tmp, path)


@register_source("cifar10-jpeg", description="CIFAR-10 re-encoded as JPEG (the shared tarball "
                 "cifar10_jpeg/cifar10-jpeg.tar.gz under --data-root); lossy, never call it cifar10",
                 default_heldout=5000)
def load_cifar10_jpeg(root: Path | None = None, download: bool = False) -> SourceData:
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    if root is None:
        raise DatasetError("dataset 'cifar10-jpeg' needs --data-root: the folder that holds "
                           "cifar10_jpeg/cifar10-jpeg.tar.gz (e.g. --data-root ../shared/data)")
    root = Path(root)
    candidates = [root / "cifar10_jpeg" / "cifar10-jpeg.tar.gz", root / "cifar10-jpeg.tar.gz"]
    tarball = next((c for c in candidates if c.is_file()), None)
    unpacked = next((d for d in (root / "cifar10_jpeg", root) if (d / "train_order.csv").is_file()), None)
    out = cache_dir() / "cifar10-jpeg" / _JPEG_MD5
    arrays = {k: out / f"{k}.npy" for k in ("train_x", "train_y", "test_x", "test_y")}
    if not all(p.is_file() for p in arrays.values()):
        if unpacked is not None:  # an unpacked copy: read its files
            files = {str(p.relative_to(unpacked)): p for p in unpacked.rglob("*") if p.is_file()}
            read = lambda rel: files[rel].read_bytes()  # noqa: E731
        elif tarball is None:
            raise DatasetError(
                f"dataset 'cifar10-jpeg': no cifar10-jpeg.tar.gz under {root} (looked for "
                f"{', '.join(str(c) for c in candidates)}). Point --data-root at the shared data folder "
                "(../shared/data) or copy the tarball there; it cannot be downloaded.")
        else:
            if _md5(tarball) != _JPEG_MD5:
                raise DatasetError(f"{tarball} has the wrong md5 (want {_JPEG_MD5}); copy it again")
            with tarfile.open(tarball) as tf:  # read the members in memory: no 60,000 small files on disk
                blobs = {m.name: tf.extractfile(m).read() for m in tf.getmembers() if m.isfile()}
            files = blobs
            read = blobs.__getitem__
        rows = list(csv.DictReader(io.StringIO(read("train_order.csv").decode())))
        rows.sort(key=lambda r: int(r["index"]))
        train_x = _decode(read, [r["path"] for r in rows], "cifar10-jpeg train/")
        train_y = np.array([int(r["label"]) for r in rows], dtype=np.int64)
        test_paths, test_labels = _class_listing(list(files), classes, prefix="test/")
        test_x = _decode(read, test_paths, "cifar10-jpeg test/")
        out.mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(arrays["train_x"], train_x)
        _atomic_save_npy(arrays["train_y"], train_y)
        _atomic_save_npy(arrays["test_x"], test_x)
        _atomic_save_npy(arrays["test_y"], np.asarray(test_labels, dtype=np.int64))
    try:
        loaded = {k: torch.from_numpy(np.load(p, allow_pickle=False)) for k, p in arrays.items()}
    except (ValueError, EOFError, OSError) as exc:  # a damaged decoded copy: decode the source again
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        if getattr(load_cifar10_jpeg, "_retried", False):
            raise DatasetError(f"decoded cifar10-jpeg arrays under {out} are unreadable ({exc}): delete {out}") from exc
        import sys

        print(f"warning: decoded cifar10-jpeg arrays under {out} are unreadable ({type(exc).__name__}); "
              "decoding the source again", file=sys.stderr)
        for p in arrays.values():
            p.unlink(missing_ok=True)
        load_cifar10_jpeg._retried = True  # type: ignore[attr-defined]
        try:
            return load_cifar10_jpeg(root, download)
        finally:
            load_cifar10_jpeg._retried = False  # type: ignore[attr-defined]
    return SourceData("cifar10-jpeg", ImageSet(loaded["train_x"], loaded["train_y"]),
                      ImageSet(loaded["test_x"], loaded["test_y"]), tuple(classes), augment="crop_flip",
                      provenance="CIFAR-10 JPEG re-encode (md5 980e733e…), training order from train_order.csv; "
                                 "test set in per-class order")


@register_source("image-folder", description="any ImageFolder layout: <path>/train/<class>/*.jpg and "
                 "<path>/test/<class>/*.jpg (option path=..., relative to --data-root)", default_heldout=500,
                 options=("path", "augment"))
def load_image_folder(root: Path | None = None, download: bool = False, path: str = "",
                      augment: str = "crop_flip") -> SourceData:
    base = Path(path) if Path(path).is_absolute() or root is None else Path(root) / path
    if not (base / "train").is_dir() or not (base / "test").is_dir():
        raise DatasetError(f"image-folder: {base} must contain train/<class>/ and test/<class>/ folders of images "
                           "(set option path = \"...\" relative to --data-root)")
    classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
    if not classes:
        raise DatasetError(f"image-folder: no class folders under {base / 'train'}")
    xs, ys = [], []
    for part in ("train", "test"):
        x, labels = _decode_folder(base / part, classes)
        xs.append(torch.from_numpy(x))
        ys.append(torch.tensor(labels, dtype=torch.int64))
    return SourceData("image-folder", ImageSet(xs[0], ys[0]), ImageSet(xs[1], ys[1]), tuple(classes),
                      augment=augment, provenance=f"image folder {base.name}")


# -------------------------------------------------------------------------------- synthetic


@register_source("synthetic", description="a tiny learnable synthetic set for tests (options: n_train, n_test, "
                 "classes, size, channels)", default_heldout=40, needs_files=False,
                 options=("n_train", "n_test", "classes", "size", "channels"))
def load_synthetic(root: Path | None = None, download: bool = False, n_train: int = 240, n_test: int = 120,
                   classes: int = 4, size: int = 8, channels: int = 1) -> SourceData:
    g = torch.Generator().manual_seed(1234)
    prototypes = torch.rand(classes, channels, size, size, generator=g)

    def draw(n: int) -> ImageSet:
        y = torch.arange(n) % classes
        y = y[torch.randperm(n, generator=g)]
        noise = 0.35 * torch.randn(n, channels, size, size, generator=g)
        x = (prototypes[y] + noise).clamp(0, 1)
        return ImageSet((x * 255).round().to(torch.uint8), y.to(torch.int64))

    return SourceData("synthetic", draw(n_train), draw(n_test), tuple(f"c{i}" for i in range(classes)),
                      provenance="synthetic prototypes + Gaussian noise (seed 1234)")
