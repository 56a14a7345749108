"""Perceptual hashes: pixel-level copies (resized, re-encoded, brightness-shifted) found without a backbone.

``imagehash.phash`` at 16 × 16 (256 bits: the low frequencies of the image's DCT, each above or below their median)
is the fingerprint; two images whose fingerprints differ in at most ``HASH_DISTANCE`` bits are copies. The size
and the distance were measured on the demo's synthetic shapes (small shapes on noisy backgrounds, the hardest case
for a pixel hash: distinct images' low frequencies look alike): at 64 bits (imagededup's default size) distinct
images came within 0–4 bits of each other, as close as the copies; at 256 bits distinct images stayed 30 or more
apart, 0.8× resized and JPEG-60 copies within 14. Among 1,500 of the benchmark's larger generated photos, though, 11
distinct pairs still came within 24 bits (the hash is grey and ignores colour), so a pair must also have the same
colour layout: the chromaticity of a 4 × 4 grid (brightness-free) may differ by at most ``COLOUR_DIFFERENCE`` in
any cell. Those 11 pairs differed by 0.15 or more; resized, re-encoded and brightness-shifted copies by at most
0.035.

Hashes are cached beside the features (``cache/phash/``), one small file per image folder, each entry stamped
with the file's size and modification time: a second check hashes nothing. The pairs within the distance come
from faiss's binary index (exact Hamming k-nearest neighbours with SIMD popcounts up to 20,000 images, its
inverted-file index above), never an n × n Python loop.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Generator

import numpy as np

from ..platform.io import atomic_write_text, read_json_file
from ..spec.records import Progress, ProgressMeter
from ..spec.states import Phase

HASH_SIZE = 16  # imagehash's hash_size: HASH_SIZE² bits
HASH_BITS = HASH_SIZE * HASH_SIZE
HASH_BYTES = HASH_BITS // 8
COLOUR_CELLS = 4  # the colour signature: the chromaticity (r and g over r + g + b) of a 4 × 4 grid, a byte each
COLOUR_BYTES = COLOUR_CELLS * COLOUR_CELLS * 2
CODE_BYTES = HASH_BYTES + COLOUR_BYTES
COLOUR_DIFFERENCE = 0.08  # copies' chromaticity differs by at most this in every cell (measured: ≤ 0.035)
HASH_DISTANCE = 24  # bits out of 256 at or below which two images are copies (about 9%)
NEIGHBOURS = 10  # per image, the closest hashes considered (bounds the work by the output)
EXACT_SEARCH = 20_000  # up to this many hashes every pair is compared; above, faiss's inverted-file index
DRAFT = 128  # JPEGs are decoded at a reduced scale of at least this many pixels (the hash looks at 64)
PLAIN = 2.0  # grey levels: a picture whose 32 × 32 thumbnail varies less than this is too plain to hash
MAX_CACHE_BYTES = 64 * 1024**2  # a cache file larger than this is not read (and is rewritten)


def perceptual_hash(path: str) -> bytes | None:
    """The image's 256-bit perceptual hash and its colour signature (``CODE_BYTES``), or None when it cannot be
    decoded or is too plain to hash (exact copies of it are still found by their bytes)."""
    # deferred: imagehash imports scipy's fftpack and PyWavelets; only a check that hashes needs it
    import imagehash
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft("RGB", (DRAFT, DRAFT))  # JPEG: decode at 1/2…1/8 scale, which the hash cannot tell apart
            colour = image.convert("RGB")
            grey = colour.convert("L")
            if np.asarray(grey.resize((32, 32), Image.Resampling.BOX), dtype=np.float32).std() < PLAIN:
                return None  # a flat picture: every one hashes alike whatever its colour, so no hash says "copy"
            bits = imagehash.phash(grey, hash_size=HASH_SIZE).hash
            cells = np.asarray(colour.resize((COLOUR_CELLS, COLOUR_CELLS), Image.Resampling.BOX), dtype=np.float32)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    chromaticity = (cells / (cells.sum(axis=-1, keepdims=True) + 1.0))[..., :2]
    return np.packbits(bits.ravel()).tobytes() + np.round(chromaticity.ravel() * 255).astype(np.uint8).tobytes()


class HashCache:
    """Stored hashes of one image folder: name → (size, mtime_ns, hex). Damaged or foreign files read as empty."""

    def __init__(self, cache_dir: str | os.PathLike | None):
        self.folder = Path(cache_dir) / "phash" if cache_dir else None
        self._loaded: dict[str, dict] = {}
        self._dirty: set[str] = set()

    def _file(self, image_folder: str) -> Path:
        assert self.folder is not None
        return self.folder / f"{hashlib.sha256(image_folder.encode('utf-8', 'surrogateescape')).hexdigest()[:24]}.json"

    def _entries(self, image_folder: str) -> dict:
        if image_folder not in self._loaded:
            entries: dict = {}
            if self.folder is not None:
                try:
                    data = read_json_file(self._file(image_folder), limit=MAX_CACHE_BYTES)
                    ours = isinstance(data, dict) and data.get("folder") == image_folder
                    if ours and data.get("bytes") == CODE_BYTES and isinstance(data.get("hashes"), dict):
                        entries = data["hashes"]
                except (OSError, UnicodeDecodeError, ValueError):
                    pass
            self._loaded[image_folder] = entries
        return self._loaded[image_folder]

    @staticmethod
    def _stamp(path: str) -> list[int] | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, path: str) -> bytes | None:
        folder, name = os.path.split(path)
        entry = self._entries(folder).get(name)
        stamp = self._stamp(path)
        if not (isinstance(entry, list) and len(entry) == 3 and stamp == entry[:2] and isinstance(entry[2], str)
                and len(entry[2]) in (0, 2 * CODE_BYTES)):  # "": too plain or undecodable, remembered too
            return None
        try:
            return bytes.fromhex(entry[2])
        except ValueError:
            return None

    def put(self, path: str, code: bytes) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        folder, name = os.path.split(path)
        self._entries(folder)[name] = [*stamp, code.hex()]
        self._dirty.add(folder)

    def save(self) -> None:
        """Write the folders that got new hashes (best effort: a cache that cannot be written is only slower)."""
        if self.folder is None:
            return
        for folder in self._dirty:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self._file(folder), json.dumps({"folder": folder, "bytes": CODE_BYTES,
                                                                  "hashes": self._entries(folder)}))
            except OSError:
                pass
        self._dirty.clear()


def hash_images(paths: list[str], cache_dir: str | os.PathLike | None = None
                ) -> Generator[Progress, None, tuple[np.ndarray, np.ndarray]]:
    """Every path's hash and colour signature (from the cache where its file is unchanged). Yields Progress;
    returns (codes (m, CODE_BYTES) uint8, the positions in ``paths`` they belong to: the images that could not be
    decoded, or are too plain to hash, are left out)."""
    cache = HashCache(cache_dir)
    meter = ProgressMeter(Phase.PERCEPTUAL, len(paths), split="all")
    yield meter.first()
    codes, kept = [], []
    for i, path in enumerate(paths):
        code = cache.get(path)
        if code is None:
            code = perceptual_hash(path) or b""
            cache.put(path, code)
        if code:
            codes.append(np.frombuffer(code, dtype=np.uint8))
            kept.append(i)
        record = meter.advance(1)
        if record:
            yield record
    cache.save()
    return (np.stack(codes) if codes else np.zeros((0, CODE_BYTES), np.uint8)), np.asarray(kept, dtype=np.int64)


def close_pairs(codes: np.ndarray, max_distance: int = HASH_DISTANCE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of rows (``hash_images``' codes) whose hashes differ in at most ``max_distance`` bits and whose colour
    layouts agree, each image's ``NEIGHBOURS`` closest considered: (rows, cols, distances), every pair once
    (row < col)."""
    # deferred: faiss loads a large native library; only the hash pass needs it
    import faiss

    n = len(codes)
    if n < 2:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    colours = codes[:, HASH_BYTES:].astype(np.int16)
    codes = np.ascontiguousarray(codes[:, :HASH_BYTES])
    index: faiss.IndexBinary
    if n <= EXACT_SEARCH:
        index = faiss.IndexBinaryFlat(HASH_BITS)
    else:  # every pair compared is 10¹⁰ popcounts at 100,000 images; copies' codes fall in the same cell
        cells = int(2 * np.sqrt(n))  # 632 at 100,000: trained on 25,000 codes in about a second
        ivf = faiss.IndexBinaryIVF(faiss.IndexBinaryFlat(HASH_BITS), HASH_BITS, cells)
        ivf.train(codes[np.sort(np.random.default_rng(0).choice(n, size=min(n, 40 * cells), replace=False))])
        ivf.nprobe = 16
        index = ivf
    index.add(codes)
    distances, columns = index.search(codes, min(NEIGHBOURS + 1, n))
    rows = np.repeat(np.arange(n), distances.shape[1])
    cols, dist = columns.ravel().astype(np.int64), distances.ravel().astype(np.int64)
    keep = (cols >= 0) & (cols != rows) & (dist <= max_distance)
    rows, cols, dist = rows[keep], cols[keep], dist[keep]
    alike = np.abs(colours[rows] - colours[cols]).max(axis=1) <= COLOUR_DIFFERENCE * 255
    rows, cols, dist = rows[alike], cols[alike], dist[alike]
    low, high = np.minimum(rows, cols), np.maximum(rows, cols)
    order = np.lexsort((dist, high, low))  # each pair's closest reading first (a pair is found from both ends)
    low, high, dist = low[order], high[order], dist[order]
    first = np.ones(len(low), dtype=bool)
    first[1:] = (low[1:] != low[:-1]) | (high[1:] != high[:-1])
    return low[first], high[first], dist[first]
