"""The decoded-image cache: where it is, how much it holds, and emptying it (``bloodcells cache``).

``training.data`` writes every preprocessed split there (``<split>-<mode>-<key>.npz``, a few tens of MB
each for 60x80 inputs, more for larger ones) and never deletes any: a new input size or preprocessing
parameter adds files; ``training.edges`` adds the crop mode's cut cells (``<split>-crop-edge-<key>.npz``);
``training.photos`` adds a small ``photos-<split>-<key>.json``. Only those files are
counted and deleted here, whatever else the folder holds.
"""

from __future__ import annotations

import re
from pathlib import Path

from app.preprocessing import MODES
from training.data import SPLITS, default_cache_dir

# The names training.data._cache_file and training.edges._cache_file give, the temporary file of a write that
# was interrupted, and the source photos training.photos found in a split.
ENTRY_RE = re.compile(rf"^(({'|'.join(SPLITS)})-({'|'.join(MODES)}|crop-edge)-[0-9a-f]{{16}}(\.tmp)?\.npz"
                      rf"|photos-({'|'.join(SPLITS)})-[0-9a-f]{{16}}\.json)$")


def resolve(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def entries(cache_dir: Path | None = None) -> list[Path]:
    folder = resolve(cache_dir)
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_file() and ENTRY_RE.match(path.name))


def size_bytes(cache_dir: Path | None = None) -> int:
    return sum(path.stat().st_size for path in entries(cache_dir))


def clear(cache_dir: Path | None = None) -> tuple[int, int]:
    """Delete the cache's entries; returns how many files and bytes were freed."""
    removed = entries(cache_dir)
    freed = sum(path.stat().st_size for path in removed)
    for path in removed:
        path.unlink(missing_ok=True)
    return len(removed), freed


def human(size: int) -> str:
    return f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB"


def describe(cache_dir: Path | None = None) -> str:
    """One line: where the cache is and what it holds (printed by every run that uses it)."""
    found = entries(cache_dir)
    if not found:
        return f"decoded-image cache {resolve(cache_dir)}: empty"
    files = f"{len(found)} file" + ("" if len(found) == 1 else "s")
    return (f"decoded-image cache {resolve(cache_dir)}: {human(sum(p.stat().st_size for p in found))} in {files} "
            "(`bloodcells cache --clear` empties it; BLOODCELLS_CACHE_DIR moves it)")
