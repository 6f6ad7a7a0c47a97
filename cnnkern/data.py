"""Data sets for training: MNIST-format IDX files and CIFAR-10 "python version" batches.

    ds = load_dataset("mnist", data_dir, allow_sample=True)
    train = DeviceLoader(ds.train_images, ds.train_labels, 128, mean=ds.mean, std=ds.std,
                         shuffle=True, crop_padding=2, device="cuda")

Files are looked for in the explicit directory, then $CNNKERN_DATA, then ~/.cache/cnnkern,
and downloaded (checksums verified) when none has them. Without a network, MNIST can fall
back to the small sample shipped in cnnkern/_data/mnist-sample.

The whole data set is held on the device as one uint8 tensor: a per-sample Python loop
(torch's DataLoader with transforms) would dominate the step time of the small nets trained
here, so batching, normalisation and augmentation are a few batched tensor ops instead.
"""
from __future__ import annotations

import gzip
import hashlib
import math
import os
import pickle
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["DatasetNotFoundError", "DeviceLoader", "ImageDataset", "find_dataset", "load_dataset", "read_idx"]

SAMPLE_DIR = Path(__file__).resolve().parent / "_data" / "mnist-sample"


class DatasetNotFoundError(FileNotFoundError):
    """The data set is in none of the searched directories and could not be downloaded."""


# --------------------------------------------------------------------------- IDX files

# IDX type code -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"


def _corrupt(path, detail: str) -> ValueError:
    return ValueError(f"{path}: corrupt or truncated IDX file ({detail}). "
                      "Delete it and download it again, or replace it with the original file.")


def _read_bytes(path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic (names lie: .gz files
    get unpacked by browsers and kept under the old name)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise _corrupt(path, f"bad gzip stream: {exc}") from None
    return data


def _parse_idx(data: bytes, path) -> torch.Tensor:
    if len(data) < 4:
        raise _corrupt(path, f"{len(data)} bytes, shorter than the 4-byte magic")
    if data[0] != 0 or data[1] != 0:
        raise _corrupt(path, f"magic starts with {data[:2].hex()}, not 0000")
    code, ndim = data[2], data[3]
    if code not in _IDX_TYPES:
        raise _corrupt(path, f"unknown type code 0x{code:02x}")
    if ndim == 0:
        raise _corrupt(path, "zero dimensions")
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise _corrupt(path, f"header needs {offset} bytes, file has {len(data)}")
    dims = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = np.dtype(_IDX_TYPES[code])
    expected = offset + math.prod(dims) * dtype.itemsize
    if len(data) != expected:
        raise _corrupt(path, f"header says {'x'.join(map(str, dims))} {dtype.name} = {expected} bytes, "
                             f"file has {len(data)}")
    array = np.frombuffer(data, dtype=dtype, offset=offset).astype(dtype.newbyteorder("="))
    return torch.from_numpy(array.reshape(dims))


def read_idx(path) -> torch.Tensor:
    """An IDX file (gzip or raw, any type code) as a tensor of its dtype and shape.

    Raises ValueError naming the file when the header does not match the file's length."""
    return _parse_idx(_read_bytes(path), path)


# --------------------------------------------------------------------------- data set specs

@dataclass(frozen=True)
class _Spec:
    name: str
    title: str
    subdirs: tuple[str, ...]            # per-data-set folders inside a search root; [0] is where downloads go
    mirrors: tuple[str, ...]
    downloads: tuple[tuple[str, str | None], ...]   # (file name, md5)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    needed: tuple[str, ...] = ()        # files that must be in the directory (IDX: the .gz may be dropped)
    raw_md5: dict[str, str] = field(default_factory=dict)  # md5 of the uncompressed official files


_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch")

_SPECS = {
    "mnist": _Spec(
        "mnist", "MNIST", ("mnist",),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        (("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
         ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
         ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
         ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")),
        (0.1307,), (0.3081,), tuple(str(i) for i in range(10)), _IDX_FILES,
        {"train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
         "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
         "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
         "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637"}),
    "fashion-mnist": _Spec(
        "fashion-mnist", "Fashion-MNIST", ("fashion-mnist",),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        (("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
         ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
         ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
         ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")),
        (0.2860,), (0.3530,),
        ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        _IDX_FILES),
    # Any data set in MNIST's file format (train-/t10k- images and labels): found only where it is
    # put (--data-dir), never downloaded, no published checksums; its classes are its labels
    # 0..max, its mean and std those of its training images.
    "idx": _Spec("idx", "MNIST-format IDX data", (), (), (), (), (), (), _IDX_FILES),
    "cifar10": _Spec(
        "cifar10", "CIFAR-10", ("cifar10/cifar-10-batches-py", "cifar-10-batches-py"),
        ("https://www.cs.toronto.edu/~kriz/",),
        (("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        _CIFAR_FILES),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
            "cifar_10": "cifar10"}


def _spec(name: str) -> _Spec:
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _SPECS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(_SPECS)}")
    return _SPECS[key]


def _is_idx(spec: _Spec) -> bool:
    return spec.name != "cifar10"


def _cache_root() -> Path:
    return Path.home() / ".cache" / "cnnkern"


def _download_root() -> Path:
    env = os.environ.get("CNNKERN_DATA")
    return Path(env).expanduser() if env else _cache_root()


def _file_in(spec: _Spec, directory: Path, stem: str) -> Path | None:
    names = (stem + ".gz", stem) if _is_idx(spec) else (stem,)
    for n in names:
        if (directory / n).is_file():
            return directory / n
    return None


def _search(spec: _Spec, data_dir=None) -> tuple[Path | None, list[tuple[Path, str]]]:
    """The first directory holding all of the data set's files, and what each searched one held."""
    roots = [Path(data_dir).expanduser()] if data_dir is not None else []
    if spec.downloads:  # (a generic IDX set is only where it was put: the cache may hold MNIST)
        if os.environ.get("CNNKERN_DATA"):
            roots.append(Path(os.environ["CNNKERN_DATA"]).expanduser())
        roots.append(_cache_root())
    dirs: list[Path] = []
    for root in roots:
        # The per-data-set folder first: a root holding MNIST files directly may also hold fashion-mnist/.
        for d in [root / s for s in spec.subdirs] + [root]:
            if d not in dirs:
                dirs.append(d)
    searched = []
    for d in dirs:
        if not d.is_dir():
            searched.append((d, "does not exist"))
            continue
        missing = [s for s in spec.needed if _file_in(spec, d, s) is None]
        if not missing:
            searched.append((d, "found"))
            return d, searched
        what = "none of the files" if len(missing) == len(spec.needed) else "missing " + ", ".join(missing)
        searched.append((d, what))
    return None, searched


def find_dataset(name: str, data_dir=None) -> Path | None:
    """The directory holding the data set's files: `data_dir`, then $CNNKERN_DATA, then
    ~/.cache/cnnkern, each either directly or in the data set's own folder. No download."""
    return _search(_spec(name), data_dir)[0]


# --------------------------------------------------------------------------- download

class _ChecksumError(ValueError):
    pass


def _md5_file(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _urlopen(url: str):
    """One place to open URLs, so that tests can serve bytes without a network."""
    import urllib.request
    request = urllib.request.Request(url, headers={"User-Agent": "cnnkern"})
    return urllib.request.urlopen(request, timeout=20)


def _download(url: str, dest: Path, md5: str | None, progress: bool) -> None:
    """Fetch into a temporary file beside `dest` and rename it only once verified, so an
    interrupted or bad download never leaves a file that later searches would take."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        received = 0
        with os.fdopen(fd, "wb") as out, _urlopen(url) as response:
            headers = getattr(response, "headers", None)
            total = int(headers.get("Content-Length") or 0) if headers is not None else 0
            bar = None
            if progress:
                print(f"cnnkern: downloading {url}", file=sys.stderr)
                try:
                    from tqdm import tqdm
                    bar = tqdm(total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name)
                except ImportError:  # a missing progress bar is no reason to fail a download
                    pass
            try:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()
        if total and received != total:
            raise OSError(f"incomplete download: {received} of {total} bytes")
        if md5 is not None and digest.hexdigest() != md5:
            raise _ChecksumError(f"MD5 {digest.hexdigest()} does not match the published {md5}")
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _extract_cifar(archive: Path, dest: Path) -> None:
    """Unpack cifar-10-batches-py/ into `dest`, refusing any member outside it or not a plain
    file or folder (a tar can otherwise write anywhere, or plant links)."""
    import shutil
    import tarfile
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                parts = PurePosixPath(m.name).parts
                if (m.name.startswith("/") or ".." in parts or not parts or parts[0] != "cifar-10-batches-py"
                        or not (m.isfile() or m.isdir())):
                    raise _ChecksumError(f"{archive}: unexpected member {m.name!r}, not the official archive")
            kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kwargs)
        dest.mkdir(parents=True, exist_ok=True)
        for f in (tmp / "cifar-10-batches-py").iterdir():
            if f.is_file():
                os.replace(f, dest / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fetch_dataset(spec: _Spec, progress: bool, failures: list[str]) -> Path | None:
    """Download into $CNNKERN_DATA or ~/.cache/cnnkern; None (reasons in `failures`) if it fails."""
    dest = _download_root() / spec.subdirs[0]
    # The CIFAR archive goes beside cifar-10-batches-py/, not inside it.
    folder = dest.parent if not _is_idx(spec) else dest
    created = [d for d in (folder, *folder.parents) if not d.exists()]
    if _fetch_into(spec, dest, folder, progress, failures):
        return dest
    # An empty folder left by a failed download would show up in the next search's report.
    for d in created:
        try:
            d.rmdir()
        except OSError:
            break
    return None


def _fetch_into(spec: _Spec, dest: Path, folder: Path, progress: bool, failures: list[str]) -> bool:
    import http.client
    for fname, md5 in spec.downloads:
        target = folder / fname
        if target.is_file() and md5 is not None and _md5_file(target) == md5:
            continue
        for mirror in spec.mirrors:
            url = mirror + fname
            try:
                _download(url, target, md5, progress)
                break
            except (OSError, http.client.HTTPException, _ChecksumError) as exc:
                failures.append(f"{url}: {exc}")
        else:
            return False
    if not _is_idx(spec):
        archive = folder / spec.downloads[0][0]
        import tarfile
        try:
            _extract_cifar(archive, dest)
        except (OSError, EOFError, tarfile.TarError, _ChecksumError) as exc:
            failures.append(f"{archive}: {exc}")
            return False
        archive.unlink()
    return True


def _not_found(spec: _Spec, searched: list[tuple[Path, str]], failures: list[str] | None) -> DatasetNotFoundError:
    files = ", ".join(f"{s}[.gz]" if _is_idx(spec) else s for s in spec.needed)
    if not _is_idx(spec):
        files = f"cifar-10-batches-py/ ({files}, batches.meta)"
    lines = [f"{spec.title} not found. Looked in:"]
    lines += [f"  {d}  ({what})" for d, what in searched]
    if not spec.downloads:
        lines.append(f"{spec.title} has no download: pass the directory that holds it.")
    elif failures is None:
        lines.append("Download was not attempted (download=False).")
    else:
        lines.append("Download failed:")
        lines += [f"  {f}" for f in failures]
    lines += [
        "To fix, do one of:",
        "  - pass the directory holding the files (--data-dir DIR, or data_dir=DIR);",
        "  - set CNNKERN_DATA=DIR;",
        f"  - copy the files to {_download_root() / spec.subdirs[0]}/;",
        "  - run once where the network is reachable, so that they are downloaded.",
        f"Files needed: {files}.",
    ]
    if spec.name == "mnist":
        lines.append("Or pass allow_sample=True to train on the small MNIST sample shipped with cnnkern.")
    return DatasetNotFoundError("\n".join(lines))


# --------------------------------------------------------------------------- loading

@dataclass(repr=False, eq=False)  # tensors have no truth value to compare by
class ImageDataset:
    name: str
    train_images: torch.Tensor  # uint8 [N, C, H, W]
    train_labels: torch.Tensor  # int64 [N]
    test_images: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]     # per channel, [0, 1] units: published constants, so runs agree on them
    std: tuple[float, ...]
    source: str
    is_sample: bool

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, train={len(self.train_labels)}, test={len(self.test_labels)}, "
                f"image={tuple(self.train_images.shape[1:])}, source={self.source!r}, is_sample={self.is_sample})")


def _load_idx_split(spec: _Spec, directory: Path, prefix: str, verify: bool) -> tuple[torch.Tensor, torch.Tensor]:
    out = []
    for kind in ("images", "labels"):
        stem = f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
        path = _file_in(spec, directory, stem)
        data = _read_bytes(path)
        tensor = _parse_idx(data, path)
        want_ndim = 3 if kind == "images" else 1
        if tensor.dtype != torch.uint8 or tensor.dim() != want_ndim:
            raise ValueError(f"{path}: expected uint8 {kind} with {want_ndim} dimension(s), "
                             f"got {tensor.dtype} {tuple(tensor.shape)}")
        official = {"train": 60000, "t10k": 10000}[prefix]
        # Only the full official files have a published checksum; md5 of 47 MB is ~0.1 s.
        if verify and stem in spec.raw_md5 and len(tensor) == official:
            md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
            if md5 != spec.raw_md5[stem]:
                raise ValueError(f"{path}: not the official {spec.title} file (MD5 of its contents is {md5}, "
                                 f"expected {spec.raw_md5[stem]}). Delete it and download it again, "
                                 "or replace it with the original file (or, if it is a copy you "
                                 "changed on purpose, load it with verify=False / --no-verify).")
        out.append(tensor)
    images, labels = out
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {prefix} images but {len(labels)} labels")
    return images.unsqueeze(1).contiguous(), labels.long()


class _BatchUnpickler(pickle.Unpickler):
    """Only what a CIFAR batch (a dict of numpy arrays and lists) needs: a pickle can run code."""
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name}")
        return super().find_class(module, name)


def _load_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ValueError(f"{path}: not a readable CIFAR-10 batch ({type(exc).__name__}: {exc}). "
                         "Delete it and download it again, or replace it with the original file.") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    return obj


def _load_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    try:
        data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    except KeyError as exc:
        raise ValueError(f"{path}: not a CIFAR-10 batch (no {exc} key)") from None
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise ValueError(f"{path}: expected uint8 data of shape (N, 3072) and N labels, "
                         f"got {data.dtype} {data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(directory: Path) -> tuple[torch.Tensor, ...]:
    parts = [_load_cifar_batch(directory / f) for f in _CIFAR_FILES[:5]]
    test_x, test_y = _load_cifar_batch(directory / "test_batch")
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    return (torch.from_numpy(train_x), torch.from_numpy(train_y),
            torch.from_numpy(np.ascontiguousarray(test_x)), torch.from_numpy(test_y))


def _read_dataset(spec: _Spec, directory: Path, verify: bool = True) -> ImageDataset:
    classes = list(spec.classes)
    mean, std = spec.mean, spec.std
    if _is_idx(spec):
        train_x, train_y = _load_idx_split(spec, directory, "train", verify)
        test_x, test_y = _load_idx_split(spec, directory, "t10k", verify)
        if spec.name == "idx":
            if not len(train_y):
                raise ValueError(f"{directory}: no training images")
            classes = [str(i) for i in range(int(max(train_y.max(), test_y.max() if len(test_y) else 0)) + 1)]
            pixels = train_x.double() / 255
            mean, std = (pixels.mean().item(),), (max(pixels.std().item(), 1e-6),)
    else:
        train_x, train_y, test_x, test_y = _load_cifar(directory)
        if (directory / "batches.meta").is_file():
            names = _load_pickle(directory / "batches.meta").get("label_names")
            if names is not None:
                classes = [str(n) for n in names]
    for split, y in (("train", train_y), ("test", test_y)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            raise ValueError(f"{directory}: {split} labels outside 0..{len(classes) - 1}")
    return ImageDataset(spec.name, train_x, train_y, test_x, test_y, classes, mean, std,
                        str(directory), directory.resolve() == SAMPLE_DIR)


def load_dataset(name: str, data_dir=None, *, download: bool = True, allow_sample: bool = False,
                 progress: bool = True, verify: bool = True) -> ImageDataset:
    """Load "mnist", "fashion-mnist", "cifar10", or "idx" (any MNIST-format data set in
    `data_dir`) as uint8 tensors on the CPU.

    Searches like find_dataset; if absent, downloads (when `download`) to $CNNKERN_DATA or
    ~/.cache/cnnkern. If that fails too, MNIST with `allow_sample` falls back to the shipped
    sample (is_sample=True); otherwise DatasetNotFoundError says where it looked and what to do.
    A corrupt file raises ValueError naming it; verify=False skips the check of the official
    files' checksums (downloads are always checked)."""
    spec = _spec(name)
    if spec.name == "idx" and data_dir is None:
        raise ValueError('load_dataset("idx") needs data_dir: the directory holding the IDX files')
    directory, searched = _search(spec, data_dir)
    failures: list[str] | None = None
    if directory is None and download and spec.downloads:
        failures = []
        directory = _fetch_dataset(spec, progress, failures)
    if directory is None:
        if allow_sample and spec.name == "mnist":
            directory = SAMPLE_DIR
        else:
            raise _not_found(spec, searched, failures)
    return _read_dataset(spec, directory, verify)


# --------------------------------------------------------------------------- device loader

def _epoch_seed(seed: int, epoch: int) -> int:
    # A hash rather than seed + epoch, so that (seed, epoch+1) and (seed+1, epoch) differ.
    digest = hashlib.blake2b(f"cnnkern.DeviceLoader:{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


@dataclass
class _EpochPlan:
    key: tuple[int, int]
    perm: torch.Tensor | None   # sample order, None when not shuffled
    dy: torch.Tensor | None     # crop offsets into the padded image, per batch slot
    dx: torch.Tensor | None
    flip: torch.Tensor | None


class DeviceLoader:
    """Batches of (images, labels) from uint8 tensors, all work on `device`:
    images are moved to the device once at construction; each batch is converted to `dtype`,
    scaled to [0,1], normalised with mean/std, optionally augmented (random crop with zero padding
    `crop_padding`, and random horizontal flip when `flip=True`), optionally made channels_last.

    The epoch's permutation, crop offsets and flip bits are drawn together at the start of the
    epoch from a CPU torch.Generator seeded from (seed, epoch), then moved to the device once:
    the CPU stream is the same on every device, so a run gives the same batches on CPU and GPU
    and can resume on either. Padding is black pixels (0 before normalisation), as in
    torchvision's RandomCrop(padding=p). One iteration at a time: iterating advances the
    loader's own position.

    Sharding, for training on several processes: with `world_size` W > 1, batch_size is the
    global batch and the loader of `rank` r yields samples r, r+W, r+2W, ... of each global
    batch (the last batch may leave some ranks with fewer, or none). W loaders with the same
    seed, one per rank, together yield exactly the batches of the unsharded loader, and they
    share its length, positions and state_dict.
    """

    def __init__(self, images, labels, batch_size, *, mean, std, shuffle=False, drop_last=False,
                 crop_padding=0, flip=False, seed=0, device="cpu", dtype=torch.float32,
                 channels_last=False, rank=0, world_size=1):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or len(labels) != len(images):
            raise ValueError(f"labels must be [N] with N={len(images)}, got {tuple(labels.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in 0..world_size-1, got rank {rank} of world_size {world_size}")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating point type, got {dtype}")
        channels = images.shape[1]
        mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        if len(mean) not in (1, channels) or len(std) not in (1, channels):
            raise ValueError(f"mean and std need 1 or {channels} values, got {len(mean)} and {len(std)}")
        self.device = torch.device(device)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = int(batch_size)
        self.shuffle, self.drop_last, self.flip = bool(shuffle), bool(drop_last), bool(flip)
        self.crop_padding = int(crop_padding)
        self.dtype, self.channels_last = dtype, bool(channels_last)
        self.mean, self.std = mean, std
        self.seed, self.epoch, self.position = int(seed), 0, 0
        self.rank, self.world_size = int(rank), int(world_size)
        # Normalise in at least fp32 and round once to `dtype`.
        self._work_dtype = torch.promote_types(dtype, torch.float32)
        m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
        self._scale = (1.0 / (255.0 * s)).to(self.device, self._work_dtype)
        self._shift = (m / s).to(self.device, self._work_dtype)
        h, w = images.shape[2:]
        self._rows = torch.arange(h, device=self.device)
        self._cols = torch.arange(w, device=self.device)
        self._plan_cache: _EpochPlan | None = None

    @property
    def num_samples(self) -> int:
        """Samples in the data set (each epoch yields all of them, over all ranks when sharded,
        unless drop_last)."""
        return len(self.images)

    def __len__(self) -> int:
        n = len(self.images)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Start `epoch` from its first batch; the current epoch keeps its position, so a resumed
        loop may call set_epoch(e) at the top of every epoch."""
        if epoch != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state) -> None:
        epoch, position, seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        if not 0 <= position <= len(self):
            raise ValueError(f"position {position} outside 0..{len(self)} batches")
        self.epoch, self.position, self.seed = epoch, position, seed
        if position == len(self):
            self.epoch, self.position = epoch + 1, 0

    def _plan(self, epoch: int) -> _EpochPlan:
        key = (self.seed, epoch)
        if self._plan_cache is not None and self._plan_cache.key == key:
            return self._plan_cache
        n = len(self.images)
        g = torch.Generator().manual_seed(_epoch_seed(*key))
        perm = torch.randperm(n, generator=g) if self.shuffle else None
        dy = dx = flip = None
        if self.crop_padding:
            dy = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
            dx = torch.randint(0, 2 * self.crop_padding + 1, (n,), generator=g)
        if self.flip:
            flip = torch.randint(0, 2, (n,), generator=g).bool()
        move = (lambda t: None if t is None else t.to(self.device))
        self._plan_cache = _EpochPlan(key, move(perm), move(dy), move(dx), move(flip))
        return self._plan_cache

    def _augment(self, x: torch.Tensor, plan: _EpochPlan, sl: slice) -> torch.Tensor:
        """Crop and flip as one gather: the flat source index of every output pixel."""
        p = self.crop_padding
        n, c, h, w = x.shape
        rows, cols = self._rows.expand(n, -1), self._cols.expand(n, -1)
        if p:
            x = F.pad(x, (p, p, p, p))
            rows = rows + plan.dy[sl].unsqueeze(1)
            cols = cols + plan.dx[sl].unsqueeze(1)
        if plan.flip is not None:
            cols = torch.where(plan.flip[sl].unsqueeze(1), cols.flip(1), cols)
        index = (rows.unsqueeze(2) * (w + 2 * p) + cols.unsqueeze(1)).view(n, 1, h * w).expand(n, c, h * w)
        # flatten, not reshape(n, c, -1): an empty shard (n = 0) leaves no size to infer
        return torch.gather(x.flatten(2), 2, index).view(n, c, h, w)

    def _batch(self, plan: _EpochPlan, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        # This rank's positions in the epoch's order: every world_size-th of batch k's (all of them unsharded).
        sl = slice(k * self.batch_size + self.rank, min((k + 1) * self.batch_size, len(self.images)), self.world_size)
        if plan.perm is None:
            x, y = self.images[sl], self.labels[sl]
        else:
            idx = plan.perm[sl]
            x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
        if plan.dy is not None or plan.flip is not None:
            x = self._augment(x, plan, sl)
        # Lay out while still uint8: a quarter of the bytes to move.
        x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        x = x.to(self._work_dtype).mul_(self._scale).sub_(self._shift)
        return x.to(self.dtype), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start, n_batches = self.epoch, self.position, len(self)
        plan = self._plan(epoch)
        for k in range(start, n_batches):
            batch = self._batch(plan, k)
            # Advance before yielding: a state_dict taken while the batch is in use points past it.
            if k + 1 == n_batches:
                self.epoch, self.position = epoch + 1, 0
            else:
                self.position = k + 1
            yield batch
        if start >= n_batches:  # nothing left (empty epoch): still an epoch's end
            self.epoch, self.position = epoch + 1, 0
