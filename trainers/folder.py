"""Image folders (torchvision's ImageFolder layout): listed once per process, found in the decoded
cache by a stamp, decoded in parallel into a preallocated array.

- **Listing** (:func:`listing`): one ``os.scandir`` walk gives the files in ImageFolder order and a
  *stamp*: the sha256 of every file's relative path, size and mtime. A process keeps it, and a later
  call in the same process re-checks only the folders' mtimes (a file added, removed or renamed
  changes its folder's mtime), so a run lists a folder once however many trials and checks ask.
- **Identity** (:func:`folder_hash`): the content hash (the files' relative paths and sha256s, read
  in full) is computed once, when no stamp file beside the cache matches; the stamp file
  (``<cache>/images/stamps/``) maps the folder's stamp to its hash, so a later run identifies the
  folder from the walk alone. It misses only a content edit that keeps a file's size and mtime
  (``touch -r``, or a copy that sets the old mtime back); delete the stamp file to force a re-read.
- **Decoding** (:func:`decoded`): under a lock (concurrent workers decode once), chunks of files are
  decoded by worker processes (PIL; one per core, none below :data:`PARALLEL_FROM` images)
  straight into a preallocated ``.npy`` (a memory map), renamed into place when complete. Nothing is
  ever written into the user's folder. The cache is read back memory-mapped.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hps.trainers.decode import GRAY_MODES, Chunk, Seen, decode_chunk, open_image
from hps.trainers.errors import DataError

FOLDER_FORMAT = 2  # bump when the decoded cache's layout changes (2: a folder of .npy, read memory-mapped)
PARALLEL_FROM = 2048  # fewer images decode in this process: starting a pool would cost more than it saves


@dataclass(frozen=True)
class Listing:
    root: str
    splits: dict[str, list[tuple[str, str]]]  # "train"/"test" or "all" -> [(class, relative path)]
    stamp: str  # sha256 of every file's relative path, size and mtime
    dirs: tuple[tuple[str, int], ...]  # every folder walked, with its mtime

    def paths(self, split: str) -> list[str]:
        return [os.path.join(self.root, rel) for _, rel in self.splits[split]]


_LISTINGS: dict[str, Listing] = {}
_HASHES: dict[tuple[str, str], str] = {}  # (root, stamp) -> content hash


def forget_folders() -> None:
    """Drop what this process knows of folders (the next call walks them again, as a new run would)."""
    _LISTINGS.clear()
    _HASHES.clear()


def listing(root: str) -> Listing:
    """The folder's files, walked once per process while its folders' mtimes stay the same."""
    key = os.path.abspath(root)
    known = _LISTINGS.get(key)
    if known is not None and _unchanged(known.dirs):
        return known
    _LISTINGS[key] = found = _scan(root)
    return found


def _unchanged(dirs: tuple[tuple[str, int], ...]) -> bool:
    try:
        return all(os.stat(d).st_mtime_ns == mtime for d, mtime in dirs)
    except OSError:
        return False


def _scan(root: str) -> Listing:
    dirs: list[tuple[str, int]] = [(root, os.stat(root).st_mtime_ns)]
    rows: list[tuple[str, int, int]] = []
    if os.path.isdir(os.path.join(root, "train")):
        splits = {"train": _tree(root, "train", dirs, rows)}
        if os.path.isdir(os.path.join(root, "test")):
            splits["test"] = _tree(root, "test", dirs, rows)
    else:
        splits = {"all": _tree(root, "", dirs, rows)}
    h = hashlib.sha256()
    for rel, size, mtime in sorted(rows):
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return Listing(root, splits, h.hexdigest(), tuple(dirs))


def _tree(root: str, sub: str, dirs: list[tuple[str, int]], rows: list[tuple[str, int, int]]) -> list[tuple[str, str]]:
    """[(class, relative path)] of one tree in ImageFolder order (classes sorted, files sorted)."""
    folder = os.path.join(root, sub) if sub else root
    if sub:
        dirs.append((folder, os.stat(folder).st_mtime_ns))
    entries = sorted((e for e in os.scandir(folder) if not e.name.startswith(".")), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir()]
    loose = [e.name for e in entries if e.is_file()]
    where = Path(folder)
    if loose and classes:
        raise DataError(f"data.path {where}: holds files ({loose[0]}) beside class folders; images go in "
                        "<class>/ subfolders")
    if not classes:
        raise DataError(f"data.path {where}: no class subfolders; expected <class>/<image> (ImageFolder layout), "
                        "or train/<class>/ and test/<class>/")
    out = []
    for c in classes:
        files: list[tuple[tuple[str, ...], str]] = []
        stack = [os.path.join(sub, c) if sub else c]
        while stack:  # a class folder's subfolders count too (rglob)
            rel_dir = stack.pop()
            path = os.path.join(root, rel_dir)
            dirs.append((path, os.stat(path).st_mtime_ns))
            for e in os.scandir(path):
                rel = os.path.join(rel_dir, e.name)
                if e.is_dir():
                    stack.append(rel)
                elif e.is_file() and not e.name.startswith("."):
                    st = e.stat()
                    rows.append((rel, st.st_size, st.st_mtime_ns))
                    files.append((tuple(rel.split(os.sep)), rel))
        out += [(c, rel) for _, rel in sorted(files)]
    return out


# -- identity --------------------------------------------------------------------------------------

def folder_hash(root: str) -> str:
    """The folder's content hash (its files' relative paths and sha256s): read in full only when no
    stamp file matches the folder's stamp; once per process either way."""
    lst = listing(root)
    key = (os.path.abspath(root), lst.stamp)
    if key in _HASHES:
        return _HASHES[key]
    stamp_file = cache_dir() / "images" / "stamps" / f"{hashlib.sha256(key[0].encode()).hexdigest()[:32]}.json"
    try:
        saved = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        saved = {}
    if saved.get("stamp") == lst.stamp and saved.get("root") == key[0] and len(saved.get("sha256", "")) == 64:
        sha = str(saved["sha256"])
    else:
        sha = _content_hash(lst)
        _write_atomic(stamp_file, json.dumps({"root": key[0], "stamp": lst.stamp, "sha256": sha}).encode())
    _HASHES[key] = sha
    return sha


def _content_hash(lst: Listing) -> str:
    h = hashlib.sha256()
    for rel in sorted(rel for files in lst.splits.values() for _, rel in files):
        with open(os.path.join(lst.root, rel), "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        h.update(rel.encode() + b"\0" + sha.encode() + b"\n")
    return h.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        tmp.write(data)
    os.replace(tmp.name, path)  # atomic: a concurrent reader never sees half a file


def cache_dir() -> Path:
    """Where hps keeps what it derives from a user's data (never inside the user's folder)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hps"


@contextmanager
def _locked(name: str) -> Iterator[None]:
    locks = cache_dir() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with open(locks / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# -- decoding --------------------------------------------------------------------------------------

def decoded(root: str, image_size: int | None) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The folder's arrays (``x_train``, ``y_train`` and, with a test tree, ``x_test``, ``y_test``;
    the images memory-mapped, read-only) and class names, decoded into the cache the first time."""
    key = f"{folder_hash(root)}-{image_size or 'native'}-v{FOLDER_FORMAT}"
    final = cache_dir() / "images" / key
    if not final.is_dir():
        with _locked(f"images-{key}"):
            if not final.is_dir():  # another worker may have decoded it while this one waited
                build(root, image_size, final)
    arrays = {p.stem: np.load(p, mmap_mode="r" if p.stem.startswith("x_") else None) for p in final.glob("*.npy")}
    return arrays, tuple(json.loads((final / "classes.json").read_text()))


def build(root: str, image_size: int | None, final: Path, workers: int | None = None) -> None:
    """Decode the folder into ``final`` (a folder of .npy files, renamed into place when complete)."""
    lst = listing(root)
    names = sorted({c for files in lst.splits.values() for c, _ in files})
    if not any(lst.splits.values()):
        raise DataError(f"data.path {root}: holds no images")
    if len(names) < 2:
        raise DataError(f"data.path {root}: holds one class ({names[0]}); at least 2 are needed")
    with open_image(next(p for split in lst.splits for p in lst.paths(split))) as im:
        (w, h), gray = im.size, im.mode in GRAY_MODES
    side = image_size or w
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".decoding-"))
    try:
        seen = _decode_all(lst, tmp, side, 1 if gray else 3, image_size is not None, workers)
        if image_size is None and len(seen.sizes) > 1:
            (a, b), (c, d) = sorted(seen.sizes)[:2]
            raise DataError(f"data.path {root}: images have different sizes ({a}x{b}, {c}x{d}, ...); set data.image_size "
                            "to resize them all to one side")
        if image_size is None and w != h:
            raise DataError(f"data.path {root}: images are {w}x{h}; set data.image_size to resize them to a square side")
        if gray and seen.color:  # gray only when every image is: decode again in colour
            _decode_all(lst, tmp, side, 3, image_size is not None, workers)
        index = {c: i for i, c in enumerate(names)}
        for split, files in lst.splits.items():
            np.save(tmp / f"y_{_name(split)}.npy", np.asarray([index[c] for c, _ in files], dtype=np.int64))
        (tmp / "classes.json").write_text(json.dumps(names))
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _name(split: str) -> str:
    return "test" if split == "test" else "train"


def decode_workers(images: int) -> int:
    """Processes that decode ``images`` images: one per core this process may use, 1 for a few."""
    return 1 if images < PARALLEL_FROM else max(1, min(len(os.sched_getaffinity(0)), 32))


def _decode_all(lst: Listing, out: Path, side: int, channels: int, resize: bool, workers: int | None) -> Seen:
    total = sum(len(files) for files in lst.splits.values())
    n = workers or decode_workers(total)
    step = max(64, min(2048, -(-total // (n * 4))))
    chunks = []
    for split, files in lst.splits.items():
        path = str(out / f"x_{_name(split)}.npy")
        shape = (len(files), side, side, channels)
        if not files:
            np.save(path, np.zeros(shape, np.uint8))
            continue
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape).flush()  # preallocated on disk
        paths = lst.paths(split)
        chunks += [Chunk(path, i, tuple(paths[i:i + step]), side, resize) for i in range(0, len(paths), step)]
    parallel = n > 1 and len(chunks) > 1
    seen = _in_processes(chunks, min(n, len(chunks))) if parallel else [decode_chunk(c) for c in chunks]
    return Seen(frozenset().union(*(s.sizes for s in seen)), any(s.color for s in seen))


def _in_processes(chunks: list[Chunk], n: int) -> list[Seen]:
    """Decode ``chunks`` in ``n`` fresh Python processes (``python -m hps.trainers.decode``): not
    multiprocessing, whose start re-runs a user's script without a ``__main__`` guard, and whose
    fork of a process with torch's or Ray's threads may deadlock."""
    import hps

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(hps.__file__).resolve().parent.parent), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "hps.trainers.decode"]
    procs = [subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
             for _ in range(n)]
    for i, p in enumerate(procs):  # all started first: their imports overlap
        share = [{"out": c.out, "start": c.start, "paths": list(c.paths), "side": c.side, "resize": c.resize}
                 for c in chunks[i::n]]
        assert p.stdin is not None
        p.stdin.write(json.dumps(share).encode())
        p.stdin.close()
    out, failed = [], None
    try:
        for p in procs:
            assert p.stdout is not None and p.stderr is not None
            stdout, stderr = p.stdout.read(), p.stderr.read()  # a few lines each: neither pipe fills
            p.wait()
            if p.returncode:
                failed = failed or (stderr.decode().strip().splitlines() or [f"exit {p.returncode}"])[-1]
            else:
                got = json.loads(stdout)
                out.append(Seen(frozenset(tuple(s) for s in got["sizes"]), bool(got["color"])))
    finally:
        for p in procs:  # interrupted: no decoder outlives the run
            if p.poll() is None:
                p.kill()
                p.wait()
    if failed:
        raise DataError(failed if failed.startswith("data.path") else f"decoding the folder failed: {failed}")
    return out
