"""Sources, splits and forget requests: invariants, determinism, stable hashes, clear errors."""

from __future__ import annotations

import gzip
import os
import struct

import numpy as np
import pytest
import torch

from unlearnbench.datasets import (DatasetError, DatasetSpec, TensorData, build_request, build_splits, hash_indices,
                                   random_crop_flip)
from unlearnbench.datasets.sources import read_idx


@pytest.fixture(scope="module")
def digits():
    return build_splits(DatasetSpec("digits"))


def _ids(s):
    return set(s.train_source_index.tolist())


def test_digits_splits_are_disjoint_and_cover_train(digits):
    from unlearnbench.datasets.sources import load_digits

    src = load_digits()
    assert len(digits.train) + len(digits.heldout) == len(src.train)
    assert len(digits.heldout) == 150
    assert digits.train.x.dtype == torch.uint8 and digits.train.x.shape[1:] == (1, 8, 8)
    assert int(digits.train.x.max()) == 255  # rescaled from 0..16
    # the held-out images are exactly the training images not in the pool
    pool = _ids(digits)
    held = set(range(len(src.train))) - pool
    assert len(held) == len(digits.heldout)
    held_sorted = torch.tensor(sorted(held))
    assert torch.equal(src.train.x[held_sorted], digits.heldout.x)
    assert len(digits.test) == 360 and digits.num_classes == 10


def test_splits_deterministic_and_hash_stable(digits):
    build_splits.cache_clear()
    again = build_splits(DatasetSpec("digits"))
    assert torch.equal(again.train.x, digits.train.x) and again.fingerprint == digits.fingerprint
    # a stable value: if this changes, every cached model and stored split hash silently changes meaning
    assert hash_indices(torch.tensor([3, 1, 2])) == hash_indices(np.array([1, 2, 3]))
    assert hash_indices(np.array([1, 2, 3])) == "e2e2033ae7e19d68"


def test_train_subset_and_heldout_options():
    s = build_splits(DatasetSpec("synthetic", heldout=10, train_subset=50))
    assert len(s.train) == 50 and len(s.heldout) == 10
    assert s.spec.display == "synthetic-sub50"
    with pytest.raises(DatasetError, match="train_subset"):
        build_splits(DatasetSpec("synthetic", train_subset=10_000))
    with pytest.raises(DatasetError, match="heldout"):
        build_splits(DatasetSpec("synthetic", heldout=10_000))


@pytest.mark.parametrize("kind,params", [("random", {"fraction": 0.1}), ("random", {"count": 7}),
                                         ("class", {"class": 2}), ("points", {"indices": [5]}),
                                         ("points", {"count": 10})])
def test_requests_partition_pool_deterministically(digits, kind, params):
    a = build_request(digits, kind, params, seed=0)
    b = build_request(digits, kind, params, seed=0)
    n = len(digits.train)
    assert torch.equal(a.forget_idx, b.forget_idx) and a.hashes == b.hashes
    both = torch.cat([a.forget_idx, a.retain_idx])
    assert both.numel() == n and torch.equal(torch.sort(both).values, torch.arange(n))  # disjoint + cover
    if kind == "class":
        assert (digits.train.y[a.forget_idx] == 2).all() and (digits.train.y[a.retain_idx] != 2).all()
        assert a.forget_class == 2
    if kind == "points" and "indices" in params:
        assert a.forget_idx.tolist() == [5]


def test_seed_changes_random_request_but_not_class(digits):
    r0 = build_request(digits, "random", {"fraction": 0.1}, 0)
    r1 = build_request(digits, "random", {"fraction": 0.1}, 1)
    assert r0.hashes["forget"] != r1.hashes["forget"]
    assert len(r0.forget_idx) == round(0.1 * len(digits.train))
    c0 = build_request(digits, "class", {"class": 4}, 0)
    c1 = build_request(digits, "class", {"class": 4}, 1)
    assert c0.hashes == c1.hashes


def test_request_errors_are_clear(digits):
    n = len(digits.train)
    with pytest.raises(DatasetError, match=r"out of range \[0, "):
        build_request(digits, "points", {"indices": [n + 3]}, 0)
    with pytest.raises(DatasetError, match="duplicates"):
        build_request(digits, "points", {"indices": [1, 1]}, 0)
    with pytest.raises(DatasetError, match="empty forget set"):
        build_request(digits, "points", {"indices": []}, 0)
    with pytest.raises(DatasetError, match="fraction must lie"):
        build_request(digits, "random", {"fraction": 1.5}, 0)
    with pytest.raises(DatasetError, match="Did you mean 'random'"):
        build_request(digits, "randon", {"fraction": 0.1}, 0)
    with pytest.raises(DatasetError, match="no parameter"):
        build_request(digits, "class", {"clas": 1}, 0)
    with pytest.raises(DatasetError, match="out of range"):
        build_request(digits, "class", {"class": 12}, 0)


def test_unknown_dataset_names_close_matches():
    with pytest.raises(DatasetError, match="Did you mean 'mnist'"):
        DatasetSpec("mnsit")


def test_missing_files_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARNBENCH_CACHE", str(tmp_path / "cache"))  # no decoded copy from earlier runs
    build_splits.cache_clear()
    with pytest.raises(DatasetError, match=r"MNIST/raw.*--download|--download"):
        build_splits(DatasetSpec("mnist"), str(tmp_path))
    with pytest.raises(DatasetError, match="cifar10-jpeg.tar.gz"):
        build_splits(DatasetSpec("cifar10-jpeg"), str(tmp_path))
    with pytest.raises(DatasetError, match="needs --data-root"):
        build_splits(DatasetSpec("fashion-mnist"), None)


def _write_idx(path, arr: np.ndarray, gz: bool):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(str(path) + ".gz", "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


@pytest.mark.parametrize("layout,gz", [("flat", True), ("torchvision", False)])
def test_idx_loader_accepts_both_layouts(tmp_path, layout, gz):
    build_splits.cache_clear()
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path / "mnist"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for stem, n in (("train", 40), ("t10k", 12)):
        _write_idx(folder / f"{stem}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        _write_idx(folder / f"{stem}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    s = build_splits(DatasetSpec("mnist", heldout=5), str(tmp_path))
    assert len(s.train) == 35 and len(s.test) == 12 and s.image_shape == (1, 28, 28)
    arr = read_idx(next(folder.iterdir()))
    assert arr.dtype == np.uint8


def test_idx_rejects_garbage(tmp_path):
    bad = tmp_path / "x-idx"
    bad.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 8)
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(bad)


@pytest.mark.data
def test_real_mnist_if_present(data_root):
    s = build_splits(DatasetSpec("mnist"), str(data_root))
    assert (len(s.train), len(s.heldout), len(s.test)) == (55000, 5000, 10000)


def test_crop_flip_is_a_translation_and_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 32, 32)
    out = random_crop_flip(x, g)
    assert out.shape == x.shape
    # every output is the input shifted by at most 4 pixels (zero padded), possibly mirrored
    for i in range(8):
        ok = False
        for flip in (False, True):
            src = x[i].flip(-1) if flip else x[i]
            padded = torch.nn.functional.pad(src, (4, 4, 4, 4))
            for dy in range(9):
                for dx in range(9):
                    if torch.equal(padded[:, dy:dy + 32, dx:dx + 32], out[i]):
                        ok = True
        assert ok, f"image {i} is not a crop/flip of its input"


def test_tensor_data_batches_cover_once_per_epoch():
    d = TensorData(torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1), torch.arange(10))
    g = torch.Generator().manual_seed(0)
    ys = torch.cat([y for _, y in d.batches(3, shuffle=True, generator=g)])
    assert sorted(ys.tolist()) == list(range(10))
    assert d.num_batches(3) == 4 and d.num_batches(3, drop_last=True) == 3


def test_image_folder_source(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in (("train", 6), ("test", 2)):
        for cls in ("cat", "ant"):
            (tmp_path / "imgs" / part / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / part / cls / f"{i}.png")
    build_splits.cache_clear()
    s = build_splits(DatasetSpec("image-folder", heldout=2, options=(("path", "imgs"),)), str(tmp_path))
    assert s.classes == ("ant", "cat") and s.image_shape == (3, 12, 12)
    assert len(s.train) == 10 and len(s.test) == 4 and sorted(s.test.y.tolist()) == [0, 0, 1, 1]
    first = np.asarray(Image.open(tmp_path / "imgs" / "test" / "ant" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(s.test.x[0].numpy(), first)
    with pytest.raises(DatasetError, match="train/<class>"):
        build_splits(DatasetSpec("image-folder", options=(("path", "missing"),)), str(tmp_path))


def test_decoded_cache_cleans_a_killed_writers_temporaries_only(tmp_path):
    import socket
    import subprocess
    import sys

    from unlearnbench.datasets.sources import _atomic_save_npy

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    host = socket.gethostname()
    left = tmp_path / f"abc.train_x.tmp.{host}.{dead_pid}.npy"
    legacy = tmp_path / f"abc.train_y.tmp{dead_pid}.npy"  # the name before the host was recorded
    live = tmp_path / f"abc.test_x.tmp.{host}.{os.getppid()}.npy"  # a concurrent writer that is still alive
    elsewhere = tmp_path / f"abc.test_x.tmp.another-host.{dead_pid}.npy"  # its PID means nothing here
    other = tmp_path / "notes.tmpx.npy"
    for f in (left, legacy, live, elsewhere, other):
        f.write_bytes(b"partial")
    _atomic_save_npy(tmp_path / "abc.test_y.npy", np.arange(3))
    assert not left.exists() and not legacy.exists()
    assert live.exists() and elsewhere.exists() and other.exists()
    assert np.load(tmp_path / "abc.test_y.npy").tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["abc.test_y.npy", live.name, elsewhere.name,
                                                                 other.name])
