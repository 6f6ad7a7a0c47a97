"""cnnkern.data: IDX and CIFAR-10 reading, the search order, downloads (served locally, never
from the network), the shipped MNIST sample, and DeviceLoader's batches, augmentation and resume."""
import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnkern import data

SHARED = (Path(__file__).parents[1] / ".." / "shared" / "data").resolve()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
REAL_URLOPEN = data._urlopen
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A fresh HOME, no $CNNKERN_DATA, and any attempt to reach the network fails the test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CNNKERN_DATA", raising=False)

    def no_network(url):
        raise AssertionError(f"test tried to open {url}")
    monkeypatch.setattr(data, "_urlopen", no_network)
    return home


# --------------------------------------------------------------------------- helpers

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file written independently of the reader under test."""
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(array)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def fake_mnist(seed: int = 0, n_train: int = 5, n_test: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
            "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
            "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
            "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}


def write_mnist(directory: Path, arrays: dict[str, np.ndarray], gz: bool = True) -> Path:
    for stem, a in arrays.items():
        write_idx(directory / (stem + ".gz" if gz else stem), a, gz=gz)
    return directory


def check_mnist(ds: data.ImageDataset, arrays: dict[str, np.ndarray]) -> None:
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.shape[1] == 1
    assert ds.train_images.is_contiguous() and ds.train_labels.dtype == torch.int64
    np.testing.assert_array_equal(ds.train_images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.train_labels.numpy(), arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(ds.test_images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def write_cifar(directory: Path, per_batch: int = 3, protocol: int = 2, seed: int = 0):
    """A tiny cifar-10-batches-py with the official key names (bytes-free, latin1-loadable)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"batch_label": name, "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, per_batch).tolist(),
                 "filenames": [f"{name}_{i}.png" for i in range(per_batch)]}
        with open(directory / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)
        batches[name] = batch
    classes = ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9"]
    with open(directory / "batches.meta", "wb") as f:
        pickle.dump({"label_names": classes, "num_cases_per_batch": per_batch, "num_vis": 3072}, f, protocol=protocol)
    return batches, classes


# --------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("gz", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(1)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, (2, 3, 4), dtype=dtype, endpoint=True)
        a.flat[0], a.flat[1] = info.min, info.max
    else:
        a = rng.standard_normal((2, 3, 4)).astype(dtype) * 1e3
    t = data.read_idx(write_idx(tmp_path / "x", a, gz=gz))
    assert t.dtype == torch.from_numpy(a).dtype
    assert tuple(t.shape) == a.shape
    np.testing.assert_array_equal(t.numpy(), a)


def test_idx_one_dimension(tmp_path):
    a = np.arange(7, dtype=np.int32) - 3
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "v", a)).numpy(), a)


def test_gzip_detected_by_content_not_name(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    gz_without_suffix = write_idx(tmp_path / "train-images-idx3-ubyte", a, gz=True)
    raw_with_suffix = write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", a, gz=False)
    assert gz_without_suffix.read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(data.read_idx(gz_without_suffix).numpy(), a)
    np.testing.assert_array_equal(data.read_idx(raw_with_suffix).numpy(), a)


GOOD = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
CORRUPT = {
    "empty": (b"", False, "shorter than"),
    "magic": (b"\x01" + GOOD[1:], False, "magic"),
    "type code": (GOOD[:2] + b"\x0a" + GOOD[3:], False, "type code"),
    "header cut": (GOOD[:9], False, "header"),
    "body cut": (GOOD[:-1], False, "header says 2x3x4"),
    "trailing bytes": (GOOD + b"\x00", False, "header says 2x3x4"),
    "gzip cut": (GOOD, True, "gzip"),
}


@pytest.mark.parametrize("case", CORRUPT, ids=list(CORRUPT))
def test_corrupt_idx_names_the_file(tmp_path, case):
    content, cut_gzip, reason = CORRUPT[case]
    if cut_gzip:
        content = gzip.compress(content)[:-6]
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as err:
        data.read_idx(path)
    assert str(path) in str(err.value)
    assert reason in str(err.value)


def test_corrupt_file_in_dataset_names_it(tmp_path):
    arrays = fake_mnist()
    write_mnist(tmp_path / "mnist", arrays)
    bad = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(idx_bytes(arrays["t10k-labels-idx1-ubyte"])[:-1]))
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        data.load_dataset("mnist", tmp_path, download=False)


def test_labels_images_count_mismatch(tmp_path):
    arrays = fake_mnist()
    arrays["train-labels-idx1-ubyte"] = arrays["train-labels-idx1-ubyte"][:-1]
    write_mnist(tmp_path, arrays)
    with pytest.raises(ValueError, match="5 train images but 4 labels"):
        data.load_dataset("mnist", tmp_path, download=False)


# --------------------------------------------------------------------------- search

def test_search_order(tmp_path, isolated, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", isolated / ".cache" / "cnnkern"
    sets = {d: fake_mnist(seed=i) for i, d in enumerate((explicit, env, cache))}
    for d, arrays in sets.items():
        write_mnist(d / "mnist", arrays)
    monkeypatch.setenv("CNNKERN_DATA", str(env))
    assert data.find_dataset("mnist", explicit) == explicit / "mnist"
    check_mnist(data.load_dataset("mnist", explicit, download=False), sets[explicit])
    # A directory without the files is passed over.
    assert data.find_dataset("mnist", tmp_path / "elsewhere") == env / "mnist"
    assert data.find_dataset("mnist") == env / "mnist"
    check_mnist(data.load_dataset("mnist", download=False), sets[env])
    monkeypatch.delenv("CNNKERN_DATA")
    assert data.find_dataset("mnist") == cache / "mnist"
    ds = data.load_dataset("mnist", download=False)
    check_mnist(ds, sets[cache])
    assert ds.source == str(cache / "mnist") and not ds.is_sample


def test_layouts(tmp_path):
    # Files directly in the directory, uncompressed names.
    mnist = fake_mnist(seed=1)
    write_mnist(tmp_path / "flat", mnist, gz=False)
    assert data.find_dataset("mnist", tmp_path / "flat") == tmp_path / "flat"
    check_mnist(data.load_dataset("mnist", tmp_path / "flat", download=False), mnist)
    # The per-data-set folder beats files lying directly in the root.
    fashion = fake_mnist(seed=2)
    write_mnist(tmp_path / "flat" / "fashion-mnist", fashion)
    ds = data.load_dataset("fashion-mnist", tmp_path / "flat", download=False)
    check_mnist(ds, fashion)
    assert ds.classes[0] == "T-shirt/top" and ds.mean == (0.2860,)
    # CIFAR: cifar10/cifar-10-batches-py, cifar-10-batches-py, or the batches folder itself.
    for sub in ("cifar10/cifar-10-batches-py", "cifar-10-batches-py", ""):
        root = tmp_path / f"c{len(sub)}"
        write_cifar(root / sub)
        assert data.find_dataset("cifar10", root) == root / sub
    # An incomplete folder is not taken.
    write_mnist(tmp_path / "partial", {k: v for k, v in mnist.items() if k != "t10k-labels-idx1-ubyte"})
    assert data.find_dataset("mnist", tmp_path / "partial") is None


def test_not_found_lists_where_it_looked(tmp_path, isolated, monkeypatch):
    env = tmp_path / "env"
    monkeypatch.setenv("CNNKERN_DATA", str(env))
    arrays = fake_mnist()
    write_mnist(tmp_path / "given", {k: v for k, v in arrays.items() if k != "t10k-labels-idx1-ubyte"})
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("mnist", tmp_path / "given", download=False)
    assert isinstance(err.value, FileNotFoundError)
    msg = str(err.value)
    for d in (tmp_path / "given", tmp_path / "given" / "mnist", env, env / "mnist", isolated / ".cache" / "cnnkern"):
        assert f"  {d}  (" in msg
    assert "missing t10k-labels-idx1-ubyte" in msg
    assert "--data-dir" in msg and "CNNKERN_DATA" in msg and "download=False" in msg


def test_unknown_name():
    with pytest.raises(ValueError, match="known: mnist, fashion-mnist, idx, cifar10"):
        data.find_dataset("imagenet")


# --------------------------------------------------------------------------- downloads

def serve(monkeypatch, files: dict[str, bytes], fail: tuple[str, ...] = ()):
    """Replace the URL opener with one that serves `files` by URL; URLs in `fail` are unreachable."""
    asked = []

    def urlopen(url):
        asked.append(url)
        if url in fail or url not in files:
            raise urllib.error.URLError("no network here")
        return io.BytesIO(files[url])
    monkeypatch.setattr(data, "_urlopen", urlopen)
    return asked


def mnist_remote(monkeypatch, arrays, mirrors=("http://one/", "http://two/")):
    """Point the MNIST spec at fake mirrors with the fake files' checksums; the gz bytes by name."""
    blobs = {stem + ".gz": gzip.compress(idx_bytes(a), mtime=0) for stem, a in arrays.items()}
    spec = dataclasses.replace(data._SPECS["mnist"], mirrors=mirrors,
                               downloads=tuple((n, hashlib.md5(b).hexdigest()) for n, b in blobs.items()))
    monkeypatch.setitem(data._SPECS, "mnist", spec)
    return blobs


def test_download_writes_and_verifies(tmp_path, isolated, monkeypatch):
    arrays = fake_mnist(seed=3)
    blobs = mnist_remote(monkeypatch, arrays)
    # The first mirror is down: every file comes from the second.
    asked = serve(monkeypatch, {"http://two/" + n: b for n, b in blobs.items()})
    ds = data.load_dataset("mnist", tmp_path / "nothing", progress=False)
    check_mnist(ds, arrays)
    dest = isolated / ".cache" / "cnnkern" / "mnist"
    assert ds.source == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted(blobs)
    assert all((dest / n).read_bytes() == b for n, b in blobs.items())
    assert asked[:2] == ["http://one/train-images-idx3-ubyte.gz", "http://two/train-images-idx3-ubyte.gz"]
    # Found locally the next time: nothing is fetched.
    asked.clear()
    check_mnist(data.load_dataset("mnist", progress=False), arrays)
    assert asked == []


def test_download_goes_to_cnnkern_data(tmp_path, monkeypatch):
    arrays = fake_mnist(seed=4)
    blobs = mnist_remote(monkeypatch, arrays)
    serve(monkeypatch, {"http://one/" + n: b for n, b in blobs.items()})
    monkeypatch.setenv("CNNKERN_DATA", str(tmp_path / "env"))
    ds = data.load_dataset("mnist", progress=False)
    assert ds.source == str(tmp_path / "env" / "mnist")
    check_mnist(ds, arrays)


def test_download_bad_checksum_leaves_nothing(tmp_path, isolated, monkeypatch):
    arrays = fake_mnist(seed=5)
    blobs = mnist_remote(monkeypatch, arrays, mirrors=("http://one/",))
    tampered = {"http://one/" + n: b[:-1] + bytes([b[-1] ^ 1]) for n, b in blobs.items()}
    serve(monkeypatch, tampered)
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("mnist", progress=False)
    assert "http://one/train-images-idx3-ubyte.gz" in str(err.value)
    published = hashlib.md5(blobs["train-images-idx3-ubyte.gz"]).hexdigest()
    assert f"does not match the published {published}" in str(err.value)
    assert list(isolated.iterdir()) == []  # no file, no temporary, no empty folder


def test_no_network_error_and_sample_fallback(tmp_path, isolated, monkeypatch):
    serve(monkeypatch, {})
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("mnist", tmp_path / "given", progress=False)
    msg = str(err.value)
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz: <urlopen error no network" in msg
    assert "http://yann.lecun.com/exdb/mnist/train-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "given") in msg and str(isolated / ".cache" / "cnnkern") in msg
    assert "CNNKERN_DATA" in msg and "allow_sample" in msg
    assert list(isolated.iterdir()) == []
    ds = data.load_dataset("mnist", tmp_path / "given", progress=False, allow_sample=True)
    assert ds.is_sample and ds.source == str(data.SAMPLE_DIR)
    # Only MNIST has a sample.
    with pytest.raises(data.DatasetNotFoundError, match="CIFAR-10 not found"):
        data.load_dataset("cifar10", progress=False, allow_sample=True)


def test_download_from_file_url(tmp_path, monkeypatch, capsys):
    """The real urllib path on a file:// URL, progress bar included."""
    monkeypatch.setattr(data, "_urlopen", REAL_URLOPEN)
    arrays = fake_mnist(seed=6)
    blobs = mnist_remote(monkeypatch, arrays, mirrors=((tmp_path / "mirror").as_uri() + "/",))
    (tmp_path / "mirror").mkdir()
    for n, b in blobs.items():
        (tmp_path / "mirror" / n).write_bytes(b)
    check_mnist(data.load_dataset("mnist", progress=True), arrays)
    assert "downloading file://" in capsys.readouterr().err


def cifar_tar(tmp_path: Path, extra: tarfile.TarInfo | None = None) -> bytes:
    write_cifar(tmp_path / "src" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x" * extra.size))
    return buf.getvalue()


def cifar_remote(monkeypatch, blob: bytes):
    spec = dataclasses.replace(data._SPECS["cifar10"], mirrors=("http://c/",),
                               downloads=(("cifar-10-python.tar.gz", hashlib.md5(blob).hexdigest()),))
    monkeypatch.setitem(data._SPECS, "cifar10", spec)
    serve(monkeypatch, {"http://c/cifar-10-python.tar.gz": blob})


def test_cifar_download_extracts(tmp_path, isolated, monkeypatch):
    cifar_remote(monkeypatch, cifar_tar(tmp_path))
    ds = data.load_dataset("cifar10", progress=False)
    folder = isolated / ".cache" / "cnnkern" / "cifar10"
    assert ds.source == str(folder / "cifar-10-batches-py")
    assert len(ds.train_labels) == 15 and ds.classes[3] == "c3"
    assert sorted(p.name for p in folder.iterdir()) == ["cifar-10-batches-py"]  # archive removed, no temp left


def test_cifar_archive_escaping_its_folder_is_refused(tmp_path, isolated, monkeypatch):
    evil = tarfile.TarInfo("cifar-10-batches-py/../../evil")
    evil.size = 3
    cifar_remote(monkeypatch, cifar_tar(tmp_path, evil))
    with pytest.raises(data.DatasetNotFoundError, match="unexpected member"):
        data.load_dataset("cifar10", progress=False)
    cache = isolated / ".cache" / "cnnkern"
    assert not any(p.name == "evil" for p in isolated.rglob("*"))
    assert not (cache / "cifar10" / "cifar-10-batches-py").exists()


# --------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches(tmp_path, protocol):
    batches, classes = write_cifar(tmp_path / "cifar-10-batches-py", per_batch=4, protocol=protocol)
    ds = data.load_dataset("cifar10", tmp_path, download=False)
    assert ds.name == "cifar10" and ds.classes == classes and not ds.is_sample
    assert ds.train_images.shape == (20, 3, 32, 32) and ds.test_images.shape == (4, 3, 32, 32)
    assert ds.train_images.dtype == torch.uint8 and ds.train_images.is_contiguous()
    assert ds.train_labels.dtype == torch.int64 and ds.mean == (0.4914, 0.4822, 0.4465)
    # Batch 2, row 1: red, green, blue planes of 32x32, row-major.
    row = batches["data_batch_2"]["data"][1]
    img = ds.train_images[4 + 1].numpy()
    for c, y, x in ((0, 0, 0), (0, 3, 17), (1, 5, 2), (2, 31, 30)):
        assert img[c, y, x] == row[c * 1024 + y * 32 + x]
    assert ds.train_labels[4 + 1] == batches["data_batch_2"]["labels"][1]
    np.testing.assert_array_equal(ds.test_labels.numpy(), batches["test_batch"]["labels"])


class _Payload:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_cifar_pickle_cannot_run_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_cifar(tmp_path / "cifar-10-batches-py")
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": _Payload(), "labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match="data_batch_3.*unexpected object"):
        data.load_dataset("cifar10", tmp_path, download=False)
    assert not (tmp_path / "pwned").exists()


# --------------------------------------------------------------------------- MNIST sample

def test_sample():
    ds = data.load_dataset("mnist", download=False, allow_sample=True)
    assert ds.is_sample and ds.name == "mnist"
    assert ds.train_images.shape == (6000, 1, 28, 28) and ds.test_images.shape == (1000, 1, 28, 28)
    assert ds.train_images.dtype == torch.uint8 and ds.train_labels.dtype == torch.int64
    assert set(ds.train_labels.tolist()) == set(range(10)) and set(ds.test_labels.tolist()) == set(range(10))
    assert ds.train_images.float().mean().item() / 255 == pytest.approx(0.1307, abs=0.01)
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert sorted(p.name for p in data.SAMPLE_DIR.iterdir()) == sorted([s + ".gz" for s in IDX_STEMS] + ["README.md"])


@pytest.mark.skipif(not (SHARED / "mnist").is_dir(), reason=f"no official MNIST at {SHARED / 'mnist'}")
def test_sample_is_the_start_of_the_official_files():
    official = data.load_dataset("mnist", SHARED, download=False)  # full files: checks their MD5 too
    assert not official.is_sample and len(official.train_labels) == 60000
    sample = data.load_dataset("mnist", data.SAMPLE_DIR, download=False)
    assert sample.is_sample
    assert torch.equal(sample.train_images, official.train_images[:6000])
    assert torch.equal(sample.train_labels, official.train_labels[:6000])
    assert torch.equal(sample.test_images, official.test_images[:1000])
    assert torch.equal(sample.test_labels, official.test_labels[:1000])


def test_full_size_mnist_must_be_the_official_files(tmp_path):
    """60000/10000 records with other contents: refused as MNIST, fine as Fashion-MNIST."""
    arrays = {"train-images-idx3-ubyte": np.zeros((60000, 28, 28), np.uint8),
              "train-labels-idx1-ubyte": np.zeros(60000, np.uint8),
              "t10k-images-idx3-ubyte": np.zeros((10000, 28, 28), np.uint8),
              "t10k-labels-idx1-ubyte": np.zeros(10000, np.uint8)}
    write_mnist(tmp_path / "fashion-mnist", arrays, gz=False)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte: not the official MNIST file"):
        data.load_dataset("mnist", tmp_path / "fashion-mnist", download=False)
    assert len(data.load_dataset("fashion-mnist", tmp_path, download=False).train_labels) == 60000


# --------------------------------------------------------------------------- DeviceLoader

def indexed_images(n: int, c: int = 1, h: int = 4, w: int = 4, seed: int = 0) -> torch.Tensor:
    """Random images whose first pixel is their index (mod 256), so a batch row can be traced back."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return x


def raw(x: torch.Tensor) -> torch.Tensor:
    """Undo mean=0, std=1 scaling: the uint8 pixels back."""
    return (x.double() * 255).round().to(torch.uint8).cpu()


@pytest.mark.parametrize("device", DEVICES)
def test_batches_and_drop_last(device):
    images, labels = indexed_images(10), torch.arange(10)
    loader = data.DeviceLoader(images, labels, 4, mean=(0,), std=(1,), device=device)
    assert len(loader) == 3 and loader.num_samples == 10
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    assert all(x.device.type == device and x.dtype == torch.float32 and y.dtype == torch.int64 for x, y in batches)
    assert torch.equal(torch.cat([y for _, y in batches]).cpu(), labels)
    assert torch.equal(torch.cat([raw(x) for x, _ in batches]), images)
    dropped = data.DeviceLoader(images, labels, 4, mean=(0,), std=(1,), drop_last=True, device=device)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]


@pytest.mark.parametrize("device", DEVICES)
def test_shuffle_sees_every_sample_once(device):
    images, labels = indexed_images(37), torch.arange(37)
    loader = data.DeviceLoader(images, labels, 8, mean=(0,), std=(1,), shuffle=True, seed=3, device=device)
    orders = []
    for _ in range(2):
        batches = list(loader)
        order = torch.cat([y for _, y in batches]).cpu()
        assert torch.equal(order.sort().values, labels)
        # Images travel with their labels.
        assert torch.equal(torch.cat([raw(x) for x, _ in batches]), images[order])
        orders.append(order)
    assert not torch.equal(orders[0], labels)
    assert not torch.equal(orders[0], orders[1])  # a new order each epoch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_normalisation(device, dtype):
    images = indexed_images(6, c=3, seed=2)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    (x, _), = data.DeviceLoader(images, torch.zeros(6, dtype=torch.long), 6, mean=mean, std=std,
                                device=device, dtype=dtype)
    assert x.dtype == dtype
    ref = (images.double() / 255 - torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)) \
        / torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    tol = {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 4e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(x.double().cpu(), ref, atol=tol, rtol=tol)


def candidates(src: torch.Tensor, p: int, flip: bool):
    """Every crop (and flipped crop) of `src` padded with p black pixels: (dy, dx, flipped) -> image."""
    h, w = src.shape[-2:]
    padded = F.pad(src, (p, p, p, p))
    for dy in range(2 * p + 1):
        for dx in range(2 * p + 1):
            crop = padded[:, dy:dy + h, dx:dx + w]
            yield (dy, dx, False), crop
            if flip:
                yield (dy, dx, True), crop.flip(-1)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p,flip", [(2, True), (2, False), (0, True)])
def test_crop_and_flip_are_shifted_copies(device, p, flip):
    n = 64
    images, labels = indexed_images(n, c=2, h=5, w=7, seed=4), torch.arange(n)
    loader = data.DeviceLoader(images, labels, 16, mean=(0, 0), std=(1, 1), shuffle=True, crop_padding=p,
                               flip=flip, seed=11, device=device)
    seen = set()
    for x, y in loader:
        assert x.shape == (len(y), 2, 5, 7)
        for out, i in zip(raw(x), y.tolist()):
            matches = [k for k, c in candidates(images[i], p, flip) if torch.equal(c, out)]
            assert len(matches) == 1, f"sample {i}: not a single crop/flip of its source ({matches})"
            seen.add(matches[0])
    # Random, not a fixed transform.
    assert len({k[2] for k in seen}) == (2 if flip else 1)
    assert len({k[:2] for k in seen}) > (10 if p else 0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", [False, True])
def test_channels_last(device, augment):
    images = indexed_images(5, c=3, h=6, w=6)
    kw = dict(crop_padding=1, flip=True) if augment else {}
    for cl in (True, False):
        (x, _), = data.DeviceLoader(images, torch.zeros(5, dtype=torch.long), 5, mean=(0,) * 3, std=(1,) * 3,
                                    channels_last=cl, device=device, **kw)
        assert x.is_contiguous(memory_format=torch.channels_last) == cl
        assert x.is_contiguous() == (not cl)
        if cl:
            assert x.stride() == (6 * 6 * 3, 1, 6 * 3, 3)


def make_loader(device="cpu", **kw):
    images, labels = indexed_images(10, c=3, h=6, w=5, seed=9), torch.arange(10)
    args = dict(mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, crop_padding=2, flip=True, seed=7, device=device)
    return data.DeviceLoader(images, labels, 4, **{**args, **kw})


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("taken", [2, 3, 5])  # mid-epoch, at the epoch boundary, in the second epoch
def test_resume_is_exact(device, taken):
    epochs = 3
    uninterrupted = make_loader(device)
    reference = [b for _ in range(epochs) for b in uninterrupted]
    assert len(reference) == 9
    first, got = make_loader(device), []
    while len(got) < taken:
        for b in first:
            got.append(b)
            if len(got) == taken:
                break
    state = first.state_dict()
    assert set(state) == {"epoch", "position", "seed"}
    assert (state["epoch"], state["position"]) == divmod(taken, 3)
    torch.manual_seed(1234)  # the global RNG must not matter
    torch.rand(100)
    resumed = make_loader(device, seed=0)
    resumed.load_state_dict(state)
    assert resumed.seed == 7
    rest = []
    while len(rest) < len(reference) - taken:
        resumed.set_epoch(resumed.epoch)  # a loop calling set_epoch must not restart a resumed epoch
        rest.extend(resumed)
    assert len(rest) == len(reference) - taken
    for (x, y), (rx, ry) in zip(got + rest, reference):
        assert torch.equal(y, ry) and torch.equal(x, rx)
    # The interrupted loader itself carries on from where it stopped.
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, reference[taken:]))


def test_epoch_is_a_pure_function_of_seed_and_epoch():
    loader = make_loader()
    e0, e1 = list(loader), list(loader)
    assert loader.state_dict() == {"epoch": 2, "position": 0, "seed": 7}
    assert not torch.equal(e0[0][1], e1[0][1])
    loader.set_epoch(0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(loader, e0))
    other = make_loader(seed=8)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(other, e0))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_same_batches_on_cpu_and_cuda():
    for (x, y), (cx, cy) in zip(make_loader("cpu"), make_loader("cuda")):
        assert torch.equal(y, cy.cpu())
        torch.testing.assert_close(x, cx.cpu())
