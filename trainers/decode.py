"""Decode a chunk of image files into a slice of a preallocated ``.npy`` (the process-pool worker of
:mod:`hps.trainers.folder`). Imports only numpy and PIL, so a spawned worker starts in a blink."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hps.trainers.errors import DataError

GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclass(frozen=True)
class Chunk:
    out: str  # the .npy (N, S, S, C) uint8 this chunk writes rows of
    start: int  # its first row
    paths: tuple[str, ...]
    side: int  # the side every image is written at
    resize: bool  # resize to ``side`` (data.image_size set); else an image of another size is only reported


@dataclass(frozen=True)
class Seen:
    sizes: frozenset[tuple[int, int]]  # the images' own sizes (w, h)
    color: bool  # some image is not gray


def open_image(path: str) -> Any:
    """The image, loaded (PIL), or a :class:`DataError` naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"data.path: {path} is not an image PIL can read ({type(e).__name__}); "
                        f"remove it or move it out of the folder") from None


def decode_chunk(chunk: Chunk) -> Seen:
    """Write the chunk's images (RGB, or L when the array has one channel) into its rows of ``out``."""
    from PIL import Image

    x = np.load(chunk.out, mmap_mode="r+")
    mode = "L" if x.shape[3] == 1 else "RGB"
    sizes, color = set(), False
    for i, path in enumerate(chunk.paths):
        with open_image(path) as im:
            sizes.add(im.size)
            color = color or im.mode not in GRAY_MODES
            if im.size != (chunk.side, chunk.side) and not chunk.resize:
                continue  # the caller refuses mixed sizes
            out = im if im.mode == mode else im.convert(mode)
            if out.size != (chunk.side, chunk.side):
                out = out.resize((chunk.side, chunk.side), Image.Resampling.BILINEAR)
            a = np.asarray(out, dtype=np.uint8)
        x[chunk.start + i] = a[..., None] if a.ndim == 2 else a
    x.flush()
    del x
    return Seen(frozenset(sizes), color)


def main() -> None:
    """``python -m hps.trainers.decode``: decode the chunks given as JSON on stdin; print what was seen."""
    import json
    import sys

    sizes: set[tuple[int, int]] = set()
    color = False
    try:
        for raw in json.load(sys.stdin):
            seen = decode_chunk(Chunk(raw["out"], raw["start"], tuple(raw["paths"]), raw["side"], raw["resize"]))
            sizes |= seen.sizes
            color = color or seen.color
    except DataError as e:
        print(e, file=sys.stderr)
        sys.exit(3)
    json.dump({"sizes": sorted(sizes), "color": color}, sys.stdout)


if __name__ == "__main__":
    main()
