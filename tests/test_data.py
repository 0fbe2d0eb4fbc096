"""lib.data: image-folder and archive sources, the cache, every bad-input error, splits and subsets.

Everything runs on tiny image folders made in tmp_path (a few 32x32 images per class), except the
last test, which loads the workplace JPEG copy when it exists (its first decode takes ~20 s once;
it is cached in the repository's ignored data/cache/ folder, so later runs take a second).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tarfile
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image

from lib import data as D
from lib.data import CLASSES, DataError
from lib.paths import REPO

NUM_TRAIN, NUM_TEST = 3, 2  # images per class in the tiny copies


def make_folder(root, num_train=NUM_TRAIN, num_test=NUM_TEST, suffix=".png", seed=0, classes=CLASSES):
    """Write random 32x32 images as root/{train,test}/<class>/NNNN<suffix>; return the expected arrays."""
    rng = np.random.default_rng(seed)
    expected = {}
    for split, n in (("train", num_train), ("test", num_test)):
        X, y = [], []
        for label, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}{suffix}")
                X.append(pixels)
                y.append(label)
        expected[f"X_{split}"], expected[f"y_{split}"] = np.stack(X), np.array(y, dtype=np.int64)
    return expected


def make_archive(folder, path, prefix="", fmt=tarfile.USTAR_FORMAT):
    """Pack folder's train/ and test/ into a .tar.gz, under `prefix` if given."""
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        for split in ("train", "test"):
            tar.add(folder / split, arcname=f"{prefix}{split}")
    return path


@pytest.fixture
def folder(tmp_path):
    """A tiny PNG copy: (path, expected arrays)."""
    path = tmp_path / "tiny"
    return path, make_folder(path)


def assert_matches(data, expected):
    for name in ("X_train", "y_train", "X_test", "y_test"):
        got = getattr(data, name)
        assert got.dtype == expected[name].dtype, name
        np.testing.assert_array_equal(got, expected[name], err_msg=name)


# --------------------------------------------------------------------------- loading

def test_load_png_folder_exact(folder, tmp_path):
    path, expected = folder
    data = D.load_cifar10(path, root=tmp_path / "root")
    assert data.X_train.shape == (10 * NUM_TRAIN, 32, 32, 3) and data.X_train.dtype == np.uint8
    assert data.X_test.shape == (10 * NUM_TEST, 32, 32, 3)
    assert_matches(data, expected)  # PNG is lossless: exact pixels, labels from the folder names
    info = data.info
    assert info["kind"] == "image-folder" and info["path"] == str(path.resolve())
    assert info["label"] == "image-folder copy tiny"
    assert (info["num_train"], info["num_test"]) == (10 * NUM_TRAIN, 10 * NUM_TEST)
    assert info["train_per_class"] == [NUM_TRAIN] * 10 and info["test_per_class"] == [NUM_TEST] * 10
    assert info["complete"] is False
    json.dumps(info)  # results embed it


def test_load_targz_equals_folder(folder, tmp_path):
    path, expected = folder
    archive = make_archive(path, tmp_path / "cifar10-jpeg75.tar.gz")
    assert D._parse_ustar(D.gzip.decompress(archive.read_bytes())) is not None  # the fast reader ran
    data = D.load_cifar10(archive, root=tmp_path / "root")
    assert_matches(data, expected)
    assert data.info["label"] == "JPEG-q75 copy (cifar10-jpeg75.tar.gz)"
    assert data.info["archive_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    # Same pixels, same digest, whatever the source.
    assert data.info["sha256"] == D.load_cifar10(path, root=tmp_path / "root").info["sha256"]


def test_archive_with_top_folder_and_pax_headers(folder, tmp_path):
    """A top-level folder and per-file pax headers (long names) go through tarfile and read the same."""
    path, expected = folder
    (path / "train" / "cat" / ("x" * 120 + ".txt")).write_text("not an image")  # needs a pax header
    archive = make_archive(path, tmp_path / "copy.tgz", prefix="cifar/", fmt=tarfile.PAX_FORMAT)
    assert D._parse_ustar(D.gzip.decompress(archive.read_bytes())) is None  # fell back to tarfile
    assert_matches(D.load_cifar10(archive, root=tmp_path / "root"), expected)


def test_jpeg_folder_decodes_close(tmp_path):
    rng = np.random.default_rng(1)
    smooth = np.repeat(np.repeat(rng.integers(0, 256, (10, 4, 4, 3)), 8, axis=1), 8, axis=2).astype(np.uint8)
    for split in ("train", "test"):
        for label, cls in enumerate(CLASSES):
            (tmp_path / "jpg" / split / cls).mkdir(parents=True)
            Image.fromarray(smooth[label]).save(tmp_path / "jpg" / split / cls / "0.jpg", quality=95)
    data = D.load_cifar10(tmp_path / "jpg", root=tmp_path / "root")
    assert data.X_train.shape == (10, 32, 32, 3)
    np.testing.assert_array_equal(data.y_train, np.arange(10))
    np.testing.assert_array_equal(data.X_train[3], np.asarray(Image.open(tmp_path / "jpg/train/cat/0.jpg")))
    assert float(np.abs(data.X_train.astype(int) - smooth).mean()) < 12  # lossy, but the same images


def test_grayscale_and_rgba_become_rgb(folder, tmp_path):
    path, expected = folder
    Image.fromarray(expected["X_train"][0]).convert("RGBA").save(path / "train" / "airplane" / "0000.png")
    Image.fromarray(np.full((32, 32), 77, np.uint8)).save(path / "test" / "truck" / "0000.png")
    data = D.load_cifar10(path, root=tmp_path / "root")
    np.testing.assert_array_equal(data.X_train[0], expected["X_train"][0])
    assert (data.X_test[10 * NUM_TEST - NUM_TEST] == 77).all()


def test_files_sorted_by_name(tmp_path):
    make_folder(tmp_path / "c", num_train=1, num_test=1)
    pixels = np.full((32, 32, 3), 9, np.uint8)
    Image.fromarray(pixels).save(tmp_path / "c" / "train" / "bird" / "0000a.png")  # sorts after 0000.png
    # An archive whose members are in reverse order reads the same as the folder.
    with tarfile.open(tmp_path / "reversed.tar", "w") as tar:
        for f in sorted((tmp_path / "c").rglob("*.png"), reverse=True):
            tar.add(f, arcname=f.relative_to(tmp_path / "c").as_posix())
    for source in (tmp_path / "c", tmp_path / "reversed.tar"):
        data = D.load_cifar10(source, root=tmp_path / "root")
        assert data.info["train_per_class"][2] == 2
        np.testing.assert_array_equal(data.X_train[3], pixels)
        np.testing.assert_array_equal(data.y_train, [0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9])


def test_parallel_decoding_matches_serial(folder, monkeypatch):
    path, expected = folder
    blobs = [(path / "train" / c / "0000.png").read_bytes() for c in CLASSES] * 3
    names = [f"img{i}" for i in range(len(blobs))]
    monkeypatch.setattr(D, "PARALLEL_MIN_IMAGES", 2)
    monkeypatch.setattr(D, "_num_workers", lambda: 2)
    np.testing.assert_array_equal(D._decode_all(blobs, names), D._decode_many(blobs, names))
    with pytest.raises(DataError, match="img7 cannot be read") as err:  # errors cross the process boundary
        D._decode_all(blobs[:7] + [b"junk"] + blobs[8:], names)
    # ... and are raised again by lib's own code, so the command line reports them as bad input (one line, exit 2)
    from lib.cli import input_error

    assert input_error(err.value)


# --------------------------------------------------------------------------- cache

def test_second_load_uses_cache_without_decoding(folder, tmp_path, monkeypatch):
    path, expected = folder
    archive = make_archive(path, tmp_path / "copy.tar.gz")
    root = tmp_path / "root"
    first = {src: D.load_cifar10(src, root=root) for src in (path, archive)}

    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(D, "_decode_image", no_decoding)
    monkeypatch.setattr(D, "_read_archive", no_decoding)
    for src, data in first.items():
        again = D.load_cifar10(src, root=root)
        assert_matches(again, expected)
        assert again.info == data.info
    entries = sorted(p.name for p in (root / "cache").iterdir())
    assert len(entries) == 2 and not any(name.startswith(".tmp") for name in entries)
    meta = json.loads((root / "cache" / entries[0] / "meta.json").read_text())
    assert meta["identity"]["path"] in (str(path.resolve()), str(archive.resolve()))


def cached_sources(root):
    """{source path: identity} of the cache entries under root."""
    metas = [json.loads((e / "meta.json").read_text()) for e in (root / "cache").iterdir()]
    return {m["identity"]["path"]: m["identity"] for m in metas}


def test_cache_separates_sources_and_notices_changes(tmp_path):
    root = tmp_path / "root"
    a = make_folder(tmp_path / "a", seed=1)
    b = make_folder(tmp_path / "b", seed=2)
    assert_matches(D.load_cifar10(tmp_path / "a", root=root), a)
    assert_matches(D.load_cifar10(tmp_path / "b", root=root), b)
    assert_matches(D.load_cifar10(tmp_path / "a", root=root), a)
    assert D.load_cifar10(tmp_path / "a", root=root).info["sha256"] != D.load_cifar10(tmp_path / "b", root=root).info["sha256"]
    assert len(list((root / "cache").iterdir())) == 2
    # Adding an image to a folder, or touching an archive, decodes again and drops the outdated entry.
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "a" / "test" / "cat" / "9999.png")
    assert D.load_cifar10(tmp_path / "a", root=root).info["num_test"] == 10 * NUM_TEST + 1
    archive = make_archive(tmp_path / "b", tmp_path / "b.tar.gz")
    D.load_cifar10(archive, root=root)
    os.utime(archive, ns=(0, 10**18))
    D.load_cifar10(archive, root=root)
    identities = cached_sources(root)
    assert len(list((root / "cache").iterdir())) == 3
    assert identities[str(archive)]["mtime_ns"] == 10**18 and identities[str(tmp_path / "a")]["num_files"] == 10 * (NUM_TRAIN + NUM_TEST) + 1
    # A copy that no longer exists loses its entry at the next decode.
    for f in sorted((tmp_path / "b").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    make_folder(tmp_path / "c")
    D.load_cifar10(tmp_path / "c", root=root)
    assert sorted(cached_sources(root)) == sorted(str(tmp_path / n) for n in ("a", "b.tar.gz", "c"))


def test_damaged_cache_is_rebuilt(folder, tmp_path):
    path, expected = folder
    root = tmp_path / "root"
    entry = D.load_cifar10(path, root=root).info["cache"]
    with open(os.path.join(entry, "X_train.npy"), "r+b") as f:
        f.truncate(100)
    with pytest.warns(UserWarning, match="unusable CIFAR-10 cache"):
        assert_matches(D.load_cifar10(path, root=root), expected)
    assert_matches(D.load_cifar10(path, root=root), expected)  # the rebuilt entry is whole again


# --------------------------------------------------------------------------- bad input

def test_missing_split(folder, tmp_path):
    path, _ = folder
    for cls in CLASSES:
        for f in (path / "test" / cls).iterdir():
            f.unlink()
    with pytest.raises(DataError, match=r"missing split folder test/"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_unknown_class_folder(folder, tmp_path):
    path, _ = folder
    (path / "train" / "cat").rename(path / "train" / "Cat")
    with pytest.raises(DataError, match=r"unknown class folder train/Cat/.*did you mean 'cat'"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_missing_class(folder, tmp_path):
    path, _ = folder
    for f in (path / "test" / "frog").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"missing class folder\(s\) test/frog/"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_image_outside_class_folder(folder, tmp_path):
    path, _ = folder
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path / "train" / "stray.png")
    with pytest.raises(DataError, match=r"train/stray.png .*not directly inside a class folder"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_wrong_image_size(folder, tmp_path):
    path, _ = folder
    Image.fromarray(np.zeros((28, 30, 3), np.uint8)).save(path / "train" / "dog" / "0001.png")
    with pytest.raises(DataError, match=r"train/dog/0001.png is 30x28, not 32x32"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_corrupt_image(folder, tmp_path):
    path, _ = folder
    good = (path / "test" / "ship" / "0001.png").read_bytes()
    (path / "test" / "ship" / "0001.png").write_bytes(good[:60])  # truncated
    with pytest.raises(DataError, match=r"test/ship/0001.png cannot be read"):
        D.load_cifar10(path, root=tmp_path / "root")
    archive = make_archive(path, tmp_path / "bad.tar.gz")
    with pytest.raises(DataError, match=r"test/ship/0001.png \(in .*bad.tar.gz\) cannot be read"):
        D.load_cifar10(archive, root=tmp_path / "root")
    (path / "test" / "ship" / "0001.png").write_bytes(b"not an image at all")  # no format PIL knows
    with pytest.raises(DataError, match=r"0001.png cannot be read \(UnidentifiedImageError: not an image format PIL "
                                        r"recognises\): the file is corrupt") as err:
        D.load_cifar10(path, root=tmp_path / "root")
    assert "BytesIO" not in str(err.value)


def test_corrupt_archive(tmp_path):
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b this is not gzip data" * 10)
    with pytest.raises(DataError, match=r"cannot read archive .*junk.tar.gz"):
        D.load_cifar10(tmp_path / "junk.tar.gz", root=tmp_path / "root")


def test_official_archive_given_as_copy(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"x")
    with pytest.raises(DataError, match="official python archive: put it into " + re.escape(str(tmp_path / "root")) + " and use"):
        D.load_cifar10(tmp_path, root=tmp_path / "root")  # the root this call looks in, not the default one


def test_nonexistent_path_and_wrong_file_type(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"'no/such/copy.tar.gz' does not exist.*CIFAR10_SOURCE"):
        D.resolve_source("no/such/copy.tar.gz")
    with pytest.raises(DataError, match=r"^data source 'sharde' \(did you mean 'shared'\?\) does not exist"):
        D.resolve_source("sharde")
    monkeypatch.setenv(D.SOURCE_ENV, "Official")  # a setting from the environment says so
    with pytest.raises(DataError, match=r"^data source 'Official' \(from CIFAR10_SOURCE; did you mean 'official'\?\)"):
        D.resolve_source(None)
    with pytest.raises(DataError, match=r"^data source 'shared.tar.gz' does not exist"):  # a file name: no keyword
        D.resolve_source("shared.tar.gz")
    (tmp_path / "copy.zip").write_bytes(b"PK")
    with pytest.raises(DataError, match="not a .tar.gz/.tgz/.tar archive"):
        D.resolve_source(tmp_path / "copy.zip")


def test_shared_alias(tmp_path, monkeypatch):
    candidates = (tmp_path / "a" / "missing.tar.gz", tmp_path / "b" / "missing.tar.gz")
    monkeypatch.setattr(D, "SHARED_CANDIDATES", candidates)
    with pytest.raises(DataError, match=r"'shared' means the workplace copy .*which is in none of .*a/missing.tar.gz"):
        D.resolve_source("shared")
    candidates[1].parent.mkdir()
    candidates[1].write_bytes(b"")
    assert D.resolve_source("shared") == str(candidates[1])  # the first candidate that exists
    assert D.canonical_source("shared") == "shared"
    assert D.canonical_source(candidates[1]) == "shared"  # any path of the copy is recorded as 'shared'
    assert D.canonical_source(tmp_path) == str(tmp_path)
    # A candidate reached through a symlink (CI's ../shared is one) is still the workplace copy.
    (tmp_path / "link").symlink_to(candidates[1].parent)
    monkeypatch.setattr(D, "SHARED_CANDIDATES", (tmp_path / "link" / "missing.tar.gz",))
    assert D.canonical_source("shared") == "shared"


def test_root_from_env(folder, tmp_path, monkeypatch):
    path, expected = folder
    monkeypatch.setenv(D.ROOT_ENV, str(tmp_path / "elsewhere"))
    assert D.load_cifar10(path).info["cache"].startswith(str(tmp_path / "elsewhere" / "cache"))


def test_source_from_env_and_relative_paths(folder, tmp_path, monkeypatch):
    path, _ = folder
    monkeypatch.delenv(D.SOURCE_ENV, raising=False)
    assert D.resolve_source() == "official"
    monkeypatch.setenv(D.SOURCE_ENV, str(path))
    assert D.resolve_source() == str(path.resolve())
    assert D.resolve_source("official") == "official"  # an explicit source wins over the variable
    monkeypatch.chdir(tmp_path)
    assert D.resolve_source("tiny") == str(path.resolve())


def test_official_without_network_says_how_to_get_data(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        assert socket.getdefaulttimeout() == D.DOWNLOAD_TIMEOUT_S  # a dead network fails fast
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(DataError, match=r"could not be downloaded.*URLError.*CIFAR10_SOURCE"):
        D.load_cifar10("official", root=tmp_path / "root")
    assert socket.getdefaulttimeout() == before

    def absent(*args, **kwargs):
        raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", absent)
    with pytest.raises(DataError, match=r"is not in .*download=False.*cifar10-jpeg75"):
        D.load_cifar10("official", root=tmp_path / "root", download=False)


def test_official_loads_through_torchvision_once(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeCIFAR10:  # torchvision's layout: .data (N, 32, 32, 3) uint8, .targets list of int
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            n = 20 if train else 10
            self.data = np.arange(n * 32 * 32 * 3, dtype=np.int64).astype(np.uint8).reshape(n, 32, 32, 3)
            self.targets = [i % 10 for i in range(n)]

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    root = tmp_path / "root"
    data = D.load_cifar10("official", root=root)
    assert calls == [(str(root), True, True), (str(root), False, True)]
    assert data.X_train.shape == (20, 32, 32, 3) and data.y_test.dtype == np.int64
    assert data.info["kind"] == "official" and data.info["label"] == "official CIFAR-10"
    assert data.info["train_per_class"] == [2] * 10
    D.load_cifar10("official", root=root, download=False)
    assert len(calls) == 2  # the second load came from the cache


# --------------------------------------------------------------------------- splits and subsets

def test_split_train_val_sizes_determinism_disjointness():
    X = np.arange(50_000)
    y = X % 10
    X_tr, y_tr, X_val, y_val = D.split_train_val(X, y)
    assert (len(X_tr), len(X_val)) == (45_000, 5_000)
    np.testing.assert_array_equal(y_tr, X_tr % 10)  # images and labels stay paired
    assert np.intersect1d(X_tr, X_val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([X_tr, X_val])), X)
    np.random.seed(123)  # the global RNG (the training seed) does not move the split
    np.testing.assert_array_equal(D.split_train_val(X, y)[2], X_val)
    assert not np.array_equal(D.split_train_val(X, y, seed=1)[2], X_val)
    # The validation images are spread over the whole set, not the last 5,000.
    assert X_val.min() < 100 and X_val.max() > 49_900
    assert len(D.split_train_val(X[:100], y[:100], num_val=10)[2]) == 10
    with pytest.raises(DataError, match="num_val=100"):
        D.split_train_val(X[:100], y[:100], num_val=100)


def test_the_split_and_the_subsets_are_the_ones_every_committed_result_was_trained_on():
    """Pinned: the validation images and the quick profile's training subset of every committed result (seed 2020,
    NumPy's PCG64 permutation). A change here silently moves images between training and validation."""
    X = np.arange(50_000)
    X_tr, y_tr, X_val, _ = D.split_train_val(X, X % 10)
    assert D.SPLIT_SEED == 2020 and X_val[:6].tolist() == [30, 46, 65, 68, 80, 97] and int(X_val.sum()) == 123832649
    X_s, _ = D.subset(X_tr, y_tr, 5000)
    assert X_s[:6].tolist() == [15123, 40256, 5505, 38097, 40669, 23930] and int(X_s.sum()) == 123611387
    assert D.CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def test_subset():
    X = np.arange(1000) * 3
    y = np.arange(1000) % 10
    X_all, y_all = D.subset(X, y, None)
    assert X_all is X and y_all is y
    np.testing.assert_array_equal(D.subset(X, y, 5000)[0], X)
    X_s, y_s = D.subset(X, y, 50)
    assert len(X_s) == 50 and len(np.unique(X_s)) == 50
    np.testing.assert_array_equal(y_s, (X_s // 3) % 10)
    np.testing.assert_array_equal(D.subset(X, y, 50)[0], X_s)  # fixed
    np.testing.assert_array_equal(D.subset(X, y, 20)[0], X_s[:20])  # smaller subsets are nested
    assert not np.array_equal(X_s, X[:50])  # a permutation, not the first images
    with pytest.raises(DataError):
        D.subset(X, y, -1)


def test_to_device_tensors():
    X = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    y = np.array([3, 1, 4, 1])
    x, labels = D.to_device_tensors(X, y, "cpu")
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.uint8 and x.is_contiguous()
    assert labels.dtype == torch.int64 and labels.tolist() == [3, 1, 4, 1]
    assert x[2, 1, 5, 7].item() == X[2, 5, 7, 1]
    np.testing.assert_array_equal(x.numpy(), X.transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match="uint8 images"):
        D.to_device_tensors(X.astype(np.float32), y, "cpu")


# --------------------------------------------------------------------------- the workplace copy

@pytest.mark.skipif(not D.SHARED_COPY.is_file(), reason="no ../shared/data/cifar10-jpeg75.tar.gz here")
def test_shared_jpeg_copy():
    """The full JPEG-q75 copy: cached under the repository's data/cache/ after the first (~20 s) decode."""
    data = D.load_cifar10("shared", root=REPO / "data")  # not conftest's private root: keep the cache
    assert data.X_train.shape == (50_000, 32, 32, 3) and data.X_test.shape == (10_000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(data.y_train), [5_000] * 10)
    np.testing.assert_array_equal(np.bincount(data.y_test), [1_000] * 10)
    info = data.info
    assert info["complete"] and (info["num_train"], info["num_test"]) == (50_000, 10_000)
    assert info["label"] == "JPEG-q75 copy (cifar10-jpeg75.tar.gz)"
    assert info["archive_sha256"].startswith("0bfcb687") and info["archive_sha256"].endswith("a4d9")
    assert 100 < data.X_test.mean() < 140  # real photographs, not blank decodes
    X_tr, _, X_val, _ = D.split_train_val(data.X_train, data.y_train)
    assert (len(X_tr), len(X_val)) == (45_000, 5_000)


def test_git_commit_is_dirty_for_changed_code_not_for_the_studys_own_outputs(tmp_path):
    import subprocess

    from lib.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    for name in ("lib/x.py", "results/quick/a.json", "figs/quick/a.png", "report.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    sha = git_commit(tmp_path)
    assert len(sha) == 12 and "+" not in sha
    for name in ("results/quick/a.json", "figs/quick/a.png", "report.md"):  # what a publishing run rewrites
        (tmp_path / name).write_text("2")
    (tmp_path / "untracked.py").write_text("new")
    assert git_commit(tmp_path) == sha
    (tmp_path / "lib/x.py").write_text("2")
    assert git_commit(tmp_path) == sha + "+dirty"
    assert git_commit(tmp_path / "nowhere") == "unknown"


def test_folder_with_one_top_folder_reads_as_the_bare_one(tmp_path):
    expected = make_folder(tmp_path / "copy" / "cifar")  # copy/cifar/{train,test}/<class>/NNNN.png
    assert_matches(D.load_cifar10(tmp_path / "copy", root=tmp_path / "root"), expected)


def test_split_train_val_keeps_the_original_order():
    X = np.arange(1000)
    X_tr, y_tr, X_val, y_val = D.split_train_val(X, X % 10, num_val=100)
    assert (np.diff(X_tr) > 0).all() and (np.diff(X_val) > 0).all()  # each part in the order of the set


def test_an_image_of_the_right_width_but_the_wrong_height(folder, tmp_path):
    path, _ = folder
    Image.fromarray(np.zeros((28, 32, 3), np.uint8)).save(path / "train" / "dog" / "0001.png")
    with pytest.raises(DataError, match=r"train/dog/0001.png is 32x28, not 32x32"):
        D.load_cifar10(path, root=tmp_path / "root")


def test_a_subset_of_every_image_is_the_set_in_order():
    X, y = np.arange(100) * 3, np.arange(100) % 10
    X_all, y_all = D.subset(X, y, 100)
    np.testing.assert_array_equal(X_all, X)
    np.testing.assert_array_equal(y_all, y)
