"""CIFAR-10 as uint8 arrays: the official data or an image-folder copy, decoded once and cached.

Sources (see `resolve_source`):
- 'official': torchvision's CIFAR10, downloaded into `<root>` when online.
- 'shared': the workplace copy `<repo>/../shared/data/cifar10-jpeg75.tar.gz` (JPEG quality 75).
- a path to an image folder `{train,test}/<class>/*.png|*.jpg`, or to a .tar.gz / .tgz / .tar of one.

Whatever the source, `load_cifar10` returns NHWC uint8 arrays (N, 32, 32, 3) and int64 labels in
`CLASSES` order. Decoding 60,000 JPEGs costs ~20 s of CPU time, so the arrays are cached once under
`<root>/cache/` as raw .npy files, keyed by the source's identity; later loads read them back in
well under a second. An image-folder copy may be smaller than the real data set (tests use a few
images per class): every class must have at least one image in each split, and the counts are
reported in `info` ('num_train', 'num_test', 'train_per_class', 'test_per_class', 'complete').
`image_files_root` gives an image-folder copy's files on disk (an archive extracted once under `<root>/extracted/`)
for the benchmark's naive pipeline, which reads them one by one as the original did (lib.naive).
"""
from __future__ import annotations

import contextlib
import difflib
import gzip
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import sys
import tarfile
import time
import uuid
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lib.paths import REPO

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SOURCE_ENV = "CIFAR10_SOURCE"
ROOT_ENV = "CIFAR10_ROOT"  # where the official download and the cache live (default <repo>/data)
SPLIT_SEED = 2020  # the train/val split and subsets never change with the training seed
SHARED_COPY = REPO.parent / "shared" / "data" / "cifar10-jpeg75.tar.gz"
# Where the JPEG-q75 copy can sit: beside the checkout (this workplace), inside it, or carried to a GPU machine.
SHARED_CANDIDATES = (SHARED_COPY, REPO / "shared" / "data" / SHARED_COPY.name, REPO / ".carry" / SHARED_COPY.name)
FULL_COUNTS = {"train": 50_000, "test": 10_000}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
PARALLEL_MIN_IMAGES = 4096  # below this, starting worker processes costs more than it saves
DOWNLOAD_TIMEOUT_S = 20  # torchvision's download has no timeout of its own
OFFICIAL_LABEL = "official CIFAR-10"  # the official data's label in results (the report tells it apart by it)
CACHE_VERSION = 1  # bump when the cache layout or decoding changes
_SPLITS = ("train", "test")
_ARRAYS = ("X_train", "y_train", "X_test", "y_test")


def _default_root() -> Path:
    """The folder of the official download when load_cifar10 is given no root: $CIFAR10_ROOT, else <repo>/data."""
    return Path(os.environ.get(ROOT_ENV, "").strip() or REPO / "data").expanduser()


def _how_to_get_data(root: Path | None = None) -> str:
    """The end of every missing-data message, naming the folder the official download goes to (`root`)."""
    return (f"To get the data: run once with internet access (torchvision downloads the official archive into "
            f"{root or _default_root()}), or copy such a download there (or set {ROOT_ENV} to the folder that "
            f"holds one), or point {SOURCE_ENV} (or the --data option; in a notebook, the first cell's data_source) at an "
            f"image-folder copy, for example ../shared/data/cifar10-jpeg75.tar.gz (`{SOURCE_ENV}=shared`).")


class DataError(ValueError):
    """The data source is missing, unreachable or not a valid CIFAR-10 copy."""


@dataclass(frozen=True, eq=False)
class Cifar10:
    """CIFAR-10 in memory: X_* are (N, 32, 32, 3) uint8 NHWC, y_* are (N,) int64 in `CLASSES` order."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    info: dict = field(default_factory=dict)  # JSON-able description of the source (see module doc)

    def __repr__(self) -> str:
        return (f"Cifar10({self.info.get('label', '?')}: train {self.X_train.shape}, "
                f"test {self.X_test.shape})")


# --------------------------------------------------------------------------- sources

def canonical_source(source: str | os.PathLike | None = None) -> str:
    """The name a config records for a source: 'official', 'shared' (the JPEG-q75 copy wherever it sits on
    this machine) or the absolute path of another copy. Results then do not depend on where a checkout lives."""
    resolved = resolve_source(source)
    if resolved != "official" and any(Path(resolved).resolve() == c.resolve() for c in SHARED_CANDIDATES
                                      if c.exists()):
        return "shared"
    return resolved


def resolve_source(source: str | os.PathLike | None = None) -> str:
    """Return 'official' or the absolute path of an image-folder copy; raise DataError if it is missing.

    None means the environment variable CIFAR10_SOURCE, or 'official' when it is unset. A relative
    path is taken from the current directory or, failing that, from the repository root (so the
    same setting works from notebooks/ and from the repository root).
    """
    from_env = source is None or source == ""
    if from_env:
        source = os.environ.get(SOURCE_ENV, "").strip() or "official"
    source = os.fspath(source)
    if source == "official":
        return "official"
    if source == "shared":
        found = next((c for c in SHARED_CANDIDATES if c.is_file()), None)
        if found is None:
            raise DataError(
                f"data source 'shared' means the workplace copy {SHARED_COPY.name}, which is in none of "
                f"{', '.join(map(str, SHARED_CANDIDATES))}. Use 'official' (needs internet once) or the "
                f"path of another image-folder copy.")
        return str(found)
    path = Path(source).expanduser()
    candidates = [path] if path.is_absolute() else [Path.cwd() / path, REPO / path]
    for candidate in candidates:
        if candidate.exists():
            candidate = candidate.resolve()
            if candidate.is_file() and not candidate.name.lower().endswith(ARCHIVE_SUFFIXES):
                raise DataError(
                    f"data source {candidate} is a file but not a .tar.gz/.tgz/.tar archive: give "
                    f"'official', 'shared', an image folder or an archive of one.")
            return str(candidate)
    tried = " or ".join(dict.fromkeys(str(c) for c in candidates))  # one path when the cwd is the repository
    # A near miss of a keyword (not of a file name: 'shared.tar.gz' is a path someone meant)
    word = not any(c in source for c in "./\\" + os.sep)
    close = difflib.get_close_matches(source.lower(), ["official", "shared"], n=1, cutoff=0.6) if word else []
    notes = ([f"from {SOURCE_ENV}"] if from_env else []) + ([f"did you mean {close[0]!r}?"] if close else [])
    notes = f" ({'; '.join(notes)})" if notes else ""
    raise DataError(
        f"data source {source!r}{notes} does not exist (looked for {tried}). Give 'official', 'shared', "
        f"or the path of an image folder {{train,test}}/<class>/*.png|jpg (or a .tar.gz of one), "
        f"e.g. via {SOURCE_ENV}. {_how_to_get_data()}")


def _source_label(path: Path) -> str:
    """Human label for an image-folder copy, naming the JPEG quality when the name gives it."""
    match = re.search(r"jpeg(\d+)", path.name.lower())
    if match:
        return f"JPEG-q{match.group(1)} copy ({path.name})"
    return f"image-folder copy {path.name}"


def source_label(name: str) -> str:
    """The label load_cifar10 gives a source (info['label']), from the name a config records, without loading it:
    'official', 'shared' or the path of a copy."""
    if name == "official":
        return "official CIFAR-10"
    return _source_label(SHARED_COPY if name == "shared" else Path(str(name)))


def _identity(source: str) -> dict:
    """What the cache key is made of: a change to any of it means decoding again."""
    if source == "official":
        return {"kind": "official", "version": CACHE_VERSION}
    path = Path(source)
    if path.is_file():
        st = path.stat()
        return {"kind": "image-folder", "version": CACHE_VERSION, "path": str(path),
                "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    # A folder: every listed file's size and mtime, so adding, removing or editing an image counts.
    digest = hashlib.sha256()
    num_files = 0
    for rel, full in _walk_folder(path):
        st = os.stat(full)
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        num_files += 1
    return {"kind": "image-folder", "version": CACHE_VERSION, "path": str(path),
            "num_files": num_files, "files_sha256": digest.hexdigest()}


# --------------------------------------------------------------------------- image folders

def _is_hidden(rel: str) -> bool:
    """Hidden files and macOS archive litter (.DS_Store, ._0001.jpg, __MACOSX/) are not data."""
    return any(part.startswith(".") or part == "__MACOSX" for part in rel.split("/"))


def is_image_file(rel: str) -> bool:
    """Whether a file at `rel` (a /-separated path inside a copy) is one this module reads as an image."""
    return not _is_hidden(rel) and rel.lower().endswith(IMAGE_SUFFIXES)


def _walk_folder(root: Path, max_depth: int = 4):
    """Yield (relative posix path, full path) of the files at most `max_depth` levels below root, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
        # prefix/split/class/file is the deepest layout we read; do not crawl further
        dirnames[:] = sorted(d for d in dirnames if depth + 1 < max_depth)
        for name in sorted(filenames):
            rel = name if depth == 0 else f"{rel_dir}/{name}"
            yield rel, os.path.join(dirpath, name)


def _index_images(paths: list[str], where: str, official_root: Path | None = None) -> dict[str, list[list[str]]]:
    """Group relative file paths into {split: [sorted image paths of class 0, ..., class 9]}; validate the layout.
    `official_root`: where load_cifar10 looks for the official download (named in a hint; default: its default)."""
    paths = [p for p in paths if not _is_hidden(p)]
    tops = {p.split("/", 1)[0] for p in paths if "/" in p}
    prefix = ""
    if not tops & set(_SPLITS):
        # An archive packed with one top-level folder (copy/train/...): look one level down.
        inner = {p.split("/", 2)[0] for p in paths if p.count("/") >= 3 and p.split("/")[1] in _SPLITS}
        if len(inner) == 1:
            prefix = inner.pop() + "/"
    index = {split: [[] for _ in CLASSES] for split in _SPLITS}
    for p in paths:
        if not p.startswith(prefix):
            continue
        parts = p[len(prefix):].split("/")
        if parts[0] not in _SPLITS or len(parts) < 2:
            continue  # README files and other folders next to train/ and test/ are not data
        is_image = is_image_file(parts[-1])
        if len(parts) != 3:
            if is_image:
                raise DataError(
                    f"image {p} in {where} is not directly inside a class folder: expected "
                    f"{{train,test}}/<class>/<image>, with <class> one of {', '.join(CLASSES)}.")
            continue
        split, cls, _ = parts
        if cls not in CLASSES:
            hint = f" (did you mean {cls.lower()!r}?)" if cls.lower() in CLASSES else ""
            raise DataError(
                f"unknown class folder {prefix}{split}/{cls}/ in {where}{hint}: class folders must be "
                f"named {', '.join(CLASSES)}.")
        if is_image:
            index[split][CLASSES.index(cls)].append(p)
    for split in _SPLITS:
        if not any(index[split]):
            looks_official = any(p.rsplit("/", 1)[-1] in ("data_batch_1", "test_batch") for p in paths)
            hint = (f" This looks like the official python archive: put it into {official_root or _default_root()} "
                    f"and use source 'official' instead." if looks_official else "")
            raise DataError(
                f"missing split folder {prefix}{split}/ (with images) in {where}: an image-folder copy "
                f"holds train/<class>/*.png|jpg and test/<class>/*.png|jpg.{hint}")
        missing = [cls for cls, files in zip(CLASSES, index[split]) if not files]
        if missing:
            raise DataError(
                f"missing class folder(s) {', '.join(f'{prefix}{split}/{c}/' for c in missing)} (or they "
                f"hold no .png/.jpg images) in {where}: every class needs at least one image in each split.")
        for files in index[split]:
            # Sorted by file name (not path) so the order is the same for a folder and its archive.
            files.sort(key=lambda p: p.rsplit("/", 1)[-1])
    return index


def _decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode one image file's bytes to a (32, 32, 3) uint8 RGB array; DataError names a bad file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size != (32, 32):
                raise DataError(f"image {name} is {im.size[0]}x{im.size[1]}, not 32x32: CIFAR-10 images "
                                f"are 32x32 RGB.")
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        # PIL names the in-memory buffer ("cannot identify image file <_io.BytesIO object at 0x...>"): say what.
        why = ("UnidentifiedImageError: not an image format PIL recognises" if isinstance(exc, UnidentifiedImageError)
               else f"{type(exc).__name__}: {exc}")
        raise DataError(f"image {name} cannot be read ({why}): the file is corrupt or not a PNG/JPEG; replace or "
                        f"delete it.") from exc
    return pixels


def _decode_many(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decode a list of image files into one (N, 32, 32, 3) uint8 array (runs in worker processes too)."""
    X = np.empty((len(blobs), 32, 32, 3), dtype=np.uint8)
    for i, (data, name) in enumerate(zip(blobs, names)):
        X[i] = _decode_image(data, name)
    return X


def _num_workers() -> int:
    """CPU cores this process may use (decoding is CPU-bound: one image costs ~0.1 ms of Python and PIL)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _decode_all(blobs: list[bytes], names: list[str]) -> np.ndarray:
    """Decode all images, in forked worker processes when there are many (60k JPEGs: ~20 s on one core)."""
    workers = min(_num_workers(), 16)
    if len(blobs) < PARALLEL_MIN_IMAGES or workers < 2 or not sys.platform.startswith("linux"):
        return _decode_many(blobs, names)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # 'fork' (as torch's DataLoader workers on Linux): 'spawn' would re-run an unguarded __main__ script
    # in every worker. The workers only run numpy and PIL, never torch.
    bounds = np.linspace(0, len(blobs), 4 * workers + 1).astype(int)
    chunks = [(blobs[a:b], names[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = list(pool.map(_decode_many, *zip(*chunks)))
    except DataError as exc:  # a bad image, found in a worker: raised again here, so it reads as bad input
        raise DataError(str(exc)) from exc
    except (OSError, BrokenProcessPool) as exc:
        warnings.warn(f"parallel decoding failed ({exc}); decoding in this process", stacklevel=2)
        return _decode_many(blobs, names)
    return np.concatenate(parts)


def _parse_ustar(raw: bytes) -> dict[str, bytes] | None:
    """{name: bytes} of the regular files of an uncompressed plain-ustar archive, or None if it uses more.

    tarfile spends ~80 us of Python per member (5 s for 60k images); this reads the fixed 512-byte
    headers directly. Anything beyond plain files, folders and a pax global header that only carries
    a comment (as `git archive` writes) returns None, and tarfile reads the archive instead.
    """
    files: dict[str, bytes] = {}
    pos = 0
    while pos + 512 <= len(raw):
        header = raw[pos:pos + 512]
        if header.count(0) == 512:  # two zero blocks end the archive
            return files
        if header[257:263] != b"ustar\0":
            return None
        try:
            size = int(header[124:136].rstrip(b"\0 ").decode() or "0", 8)
            name = header[0:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
        except (ValueError, UnicodeDecodeError):
            return None
        kind = header[156:157]
        body = raw[pos + 512:pos + 512 + size]
        if kind == b"g":
            keys = {rec.split(b" ", 1)[1].split(b"=", 1)[0] for rec in body.splitlines() if b" " in rec}
            if not keys <= {b"comment"}:
                return None
        elif kind in (b"0", b"\0"):
            files[(f"{prefix}/{name}" if prefix else name).removeprefix("./")] = body
        elif kind != b"5":
            return None  # long names, links, per-file pax headers...
        pos += 512 + (size + 511) // 512 * 512
    return None  # truncated


def _read_archive(path: Path) -> tuple[dict[str, bytes], str]:
    """Read every file of a tar(.gz) archive into memory; return ({name: bytes}, archive sha256)."""
    try:
        packed = path.read_bytes()  # 20 MB for the JPEG copy
        raw = gzip.decompress(packed) if packed[:2] == b"\x1f\x8b" else packed
        blobs = _parse_ustar(raw)
        if blobs is None:
            blobs = {}
            with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
                for member in tar:
                    if member.isfile():
                        blobs[member.name.removeprefix("./")] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        why = " ".join(str(exc).split("\n")[0].split())  # tarfile lists every method it tried, a line each
        raise DataError(f"cannot read archive {path} ({type(exc).__name__}: {why.rstrip(':')}): it is corrupt or "
                        f"not a tar/tar.gz file; download or copy it again.") from exc
    return blobs, hashlib.sha256(packed).hexdigest()


def _load_image_folder(path: Path, root: Path | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Decode an image folder or archive of one into arrays; return (arrays, info). `root`: load_cifar10's."""
    info: dict = {"kind": "image-folder", "label": _source_label(path), "path": str(path)}
    if path.is_file():
        blobs, info["archive_sha256"] = _read_archive(path)
        index = _index_images(list(blobs), str(path), root)
        read, name_of = blobs.__getitem__, (lambda rel: f"{rel} (in {path})")
    else:
        files = dict(_walk_folder(path))
        index = _index_images(list(files), str(path), root)
        read, name_of = (lambda rel: Path(files[rel]).read_bytes()), (lambda rel: files[rel])
    num_images = sum(len(f) for split in _SPLITS for f in index[split])
    print(f"lib.data: decoding {num_images} images from {path} (once; later loads use the cache)",
          file=sys.stderr)
    arrays = {}
    for split in _SPLITS:
        rels = [rel for class_files in index[split] for rel in class_files]
        arrays[f"X_{split}"] = _decode_all([read(rel) for rel in rels], [name_of(rel) for rel in rels])
        arrays[f"y_{split}"] = np.repeat(np.arange(len(CLASSES), dtype=np.int64),
                                         [len(f) for f in index[split]])
        info[f"{split}_per_class"] = [len(f) for f in index[split]]
    return arrays, info


# --------------------------------------------------------------------------- official data

def _load_official(root: Path, download: bool) -> tuple[dict[str, np.ndarray], dict]:
    """Load torchvision's CIFAR10 (downloading into root if allowed); DataError explains how to get it."""
    from torchvision.datasets import CIFAR10

    arrays = {}
    old_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # so a machine without network fails fast, not never
    try:
        root.mkdir(parents=True, exist_ok=True)
        for split in _SPLITS:
            ds = CIFAR10(str(root), train=(split == "train"), download=download)
            arrays[f"X_{split}"] = np.ascontiguousarray(ds.data, dtype=np.uint8)  # (N, 32, 32, 3)
            arrays[f"y_{split}"] = np.asarray(ds.targets, dtype=np.int64)
    except (OSError, RuntimeError, EOFError, ValueError, http.client.HTTPException) as exc:  # URLError: OSError
        network = isinstance(exc, (OSError, http.client.HTTPException)) and not isinstance(exc, FileNotFoundError)
        if not download:
            what = f"is not in {root} (download=False)"
        elif network:  # torchvision downloads only when the copy in root fails its checksums: say so
            found = [n for n in ("cifar-10-python.tar.gz", "cifar-10-batches-py") if (root / n).exists()]
            what = "could not be downloaded (no network?)" + (
                f"; {' and '.join(str(root / n) for n in found)} in {root} failed torchvision's checksums "
                f"(incomplete or corrupt): delete {'them' if len(found) > 1 else 'it'} before copying a good "
                f"download there" if found else "")
        else:  # torchvision found files but they are incomplete or corrupt (e.g. an interrupted download)
            what = f"in {root} is incomplete or corrupt (delete {root / 'cifar-10-batches-py'} and retry)"
        raise DataError(
            f"the official CIFAR-10 data {what} ({type(exc).__name__}: {exc}). {_how_to_get_data(root)}") from exc
    finally:
        socket.setdefaulttimeout(old_timeout)
    info = {"kind": "official", "label": OFFICIAL_LABEL, "path": str(root / "cifar-10-batches-py")}
    for split in _SPLITS:
        info[f"{split}_per_class"] = np.bincount(arrays[f"y_{split}"], minlength=len(CLASSES)).tolist()
    return arrays, info


# --------------------------------------------------------------------------- cache

def _arrays_sha256(arrays: dict[str, np.ndarray]) -> str:
    """Digest of the decoded pixels and labels: two sources with identical data agree."""
    digest = hashlib.sha256()
    for name in _ARRAYS:
        a = np.ascontiguousarray(arrays[name])
        a = a.astype("<i8") if name.startswith("y") else a
        digest.update(f"{name}{a.shape}".encode())
        digest.update(a.data)
    return digest.hexdigest()


_DEAD_TEMP_S = 3600  # a temporary folder this old was left by a killed process (a running write is younger)


def _temp_beside(entry: Path) -> Path:
    """A fresh temporary folder name next to `entry`, which is written there and then renamed into place, so that
    readers never see half of it."""
    return entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _dead_temp(path: Path) -> bool:
    """Whether `path` is such a temporary folder, left by a killed process (_DEAD_TEMP_S)."""
    return path.name.startswith(".tmp-") and time.time() - path.stat().st_mtime > _DEAD_TEMP_S


def _cache_dir(cache_root: Path, identity: dict) -> Path:
    """One folder per source identity, so different sources never share an entry."""
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return cache_root / f"cifar10-{identity['kind']}-{key}"


def _read_cache(entry: Path, identity: dict) -> Cifar10 | None:
    """The cached data for `identity`, or None when absent or unusable (then it is rebuilt)."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("identity") != identity:
            return None
        arrays = {name: np.load(entry / f"{name}.npy", allow_pickle=False) for name in _ARRAYS}
        for name, shape in meta["shapes"].items():
            if list(arrays[name].shape) != shape:
                raise ValueError(f"{name} has shape {arrays[name].shape}, sidecar says {shape}")
    except (OSError, ValueError, KeyError) as exc:
        warnings.warn(f"ignoring unusable CIFAR-10 cache {entry} ({exc}); decoding again", stacklevel=3)
        return None
    return Cifar10(info=meta["info"], **arrays)


def _write_cache(entry: Path, identity: dict, data: Cifar10) -> None:
    """Write the entry into a temporary folder and rename it into place, so readers never see half of it."""
    tmp = _temp_beside(entry)
    try:
        tmp.mkdir(parents=True)
        shapes = {}
        for name in _ARRAYS:
            array = getattr(data, name)
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            shapes[name] = list(array.shape)
        meta = {"identity": identity, "shapes": shapes, "info": data.info}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if entry.exists():
            shutil.rmtree(entry)  # an unusable old entry (a usable one was returned before decoding)
        os.rename(tmp, entry)
    except OSError as exc:
        # Another process won the race, or the folder is read-only: the data is still returned.
        if not (entry / "meta.json").is_file():
            warnings.warn(f"could not cache CIFAR-10 arrays in {entry} ({exc})", stacklevel=3)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _prune_cache(cache_root: Path, keep: Path) -> None:
    """Delete entries no load can use again: copies that are gone, older versions of `keep`'s source, dead temps."""
    for entry in cache_root.iterdir():
        if entry == keep or not entry.is_dir():
            continue
        try:
            if entry.name.startswith(".tmp-"):
                stale = _dead_temp(entry)
            else:
                identity = json.loads((entry / "meta.json").read_text())["identity"]
                path = identity.get("path")
                stale = path is not None and (not os.path.exists(path) or _identity(path) != identity)
        except (OSError, ValueError, KeyError):
            continue  # being written by another process, or not ours: leave it
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- public API

def load_cifar10(source: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                 download: bool = True) -> Cifar10:
    """Load CIFAR-10 from `source` (see resolve_source) as uint8 arrays, decoding once and caching in <root>/cache/.

    `root` (default: $CIFAR10_ROOT, else <repo>/data) holds the official download and the cache.
    """
    source = resolve_source(source)
    root = _default_root() if root is None else Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"the data root {root} (where the official download and the decoded cache live; "
                        f"{ROOT_ENV} or <repo>/data) is a file, not a folder: set {ROOT_ENV} to a writable folder "
                        f"(it is created where missing), or unset it")
    identity = _identity(source)
    entry = _cache_dir(root / "cache", identity)
    cached = _read_cache(entry, identity)
    if cached is not None:
        return cached
    if source == "official":
        arrays, info = _load_official(root, download)
    else:
        arrays, info = _load_image_folder(Path(source), root)
    num_train, num_test = len(arrays["y_train"]), len(arrays["y_test"])
    info.update({
        "source": source,
        "num_train": num_train,
        "num_test": num_test,
        # a full copy: 50,000 / 10,000 images; smaller copies (tests) are allowed and reported here
        "complete": num_train == FULL_COUNTS["train"] and num_test == FULL_COUNTS["test"],
        "sha256": _arrays_sha256(arrays),
        "cache": str(entry),
    })
    data = Cifar10(info=info, **arrays)
    _write_cache(entry, identity, data)
    _prune_cache(entry.parent, keep=entry)
    return data


def image_files_root(data: Cifar10, root: str | os.PathLike | None = None) -> Path | None:
    """The folder holding `data`'s image files as {train,test}/<class>/<image>, for a pipeline that reads them one
    by one (the benchmark's naive pipeline, lib.naive): an image-folder source itself, or its archive extracted
    once under <root>/extracted/<name>-<sha>/ (root: load_cifar10's; extracted into a temporary folder that is
    renamed into place, so a killed extraction is never used; such leftovers older than an hour are deleted by
    the next extraction). Either may hold the copy in one top-level folder, as load_cifar10 allows. None for the
    official data, which torchvision keeps in memory."""
    if data.info.get("kind") != "image-folder":
        return None
    source = Path(data.info["path"])
    entry = source if source.is_dir() else _extracted(source, data.info.get("archive_sha256"), root)
    if (entry / "train").is_dir():
        return entry
    inner = [d for d in entry.iterdir() if (d / "train").is_dir() and not _is_hidden(d.name)]  # one top folder
    if len(inner) != 1:
        raise DataError(f"{entry} holds no train/ folder, nor one folder with a train/ folder in it: it is not an "
                        f"image-folder copy {{train,test}}/<class>/<image> (from {source})")
    return inner[0]


def _extracted(archive: Path, sha: str | None, root: str | os.PathLike | None) -> Path:
    """The folder `archive` is extracted into once (image_files_root)."""
    sha = sha or hashlib.sha256(archive.read_bytes()).hexdigest()
    parent = (_default_root() if root is None else Path(root).expanduser()) / "extracted"
    name = archive.name
    for suffix in ARCHIVE_SUFFIXES:
        name = name.removesuffix(suffix)
    entry = parent / f"{name}-{sha[:16]}"
    if entry.is_dir():
        return entry
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if _dead_temp(old):
                shutil.rmtree(old, ignore_errors=True)
    tmp = _temp_beside(entry)
    try:
        tmp.mkdir()
        with tarfile.open(archive) as tar:
            # The 'data' filter: member paths stay inside the folder, links may not point out of it.
            tar.extractall(tmp, filter="data")
        os.rename(tmp, entry)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if not entry.is_dir():  # else another process extracted it first
            raise DataError(f"cannot extract {archive} into {parent} ({type(exc).__name__}: {exc}): check the free "
                            f"disk space and that the archive is intact (it may be corrupt)") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def split_train_val(X: np.ndarray, y: np.ndarray, num_val: int = 5000, seed: int = SPLIT_SEED):
    """Hold out `num_val` images by a fixed seeded permutation; return (X_tr, y_tr, X_val, y_val) in original order."""
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} images but y has {len(y)} labels")
    if not 0 <= num_val < len(X):
        raise DataError(f"num_val={num_val} must be at least 0 and below the {len(X)} images available")
    perm = np.random.default_rng(seed).permutation(len(X))
    val_idx, tr_idx = np.sort(perm[:num_val]), np.sort(perm[num_val:])
    return X[tr_idx], y[tr_idx], X[val_idx], y[val_idx]


def study_split(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The study's training / validation split of a loaded data set: STUDY.md holds out 10% of the training
    set (45,000 / 5,000 on the full set), the same images for every run, probe and slice."""
    return split_train_val(data.X_train, data.y_train, num_val=len(data.y_train) // 10)


def subset(X: np.ndarray, y: np.ndarray, n: int | None, seed: int = SPLIT_SEED):
    """The first n images of a fixed seeded permutation (all of them, in order, when n is None or >= len(X))."""
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} images but y has {len(y)} labels")
    if n is None or n >= len(X):
        return X, y
    if n < 0:
        raise DataError(f"subset size n={n} must not be negative")
    idx = np.random.default_rng(seed).permutation(len(X))[:n]
    return X[idx], y[idx]


def to_device_tensors(X: np.ndarray, y: np.ndarray, device):
    """NHWC uint8 numpy images and labels -> (NCHW uint8 contiguous tensor, int64 tensor) on `device`."""
    import torch

    if X.ndim != 4 or X.shape[-1] != 3 or X.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, H, W, 3), got {X.dtype} {X.shape}")
    if len(X) != len(y):
        raise DataError(f"X has {len(X)} images but y has {len(y)} labels")
    # Copy the compact uint8 data first, then transpose where the data lives (fast on a GPU).
    x = torch.from_numpy(np.ascontiguousarray(X)).to(device).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.asarray(y, dtype=np.int64)).to(device)
    return x, labels
