"""The embedded default model ``tiny``: made locally on first use, no download.

``ensure_tiny_model()`` returns a Hugging Face-style folder (config.json, model.safetensors,
generation_config.json, tokenizer files with the chat template) under
``$XDG_CACHE_HOME/agentkv/models/tiny-v1`` (``~/.cache/...`` when XDG_CACHE_HOME is unset).

Creation is atomic and safe under concurrent first use: each builder writes a private temporary
folder beside the target and renames it into place; whoever loses the rename discards its copy.
An advisory lock (where the platform has ``fcntl``) makes later racers wait instead of rebuilding.
The folder name carries the version, so a change to the model makes a new folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from runtime.tiny.build import MARKER_FILE, TINY_VERSION, TinySpec, build_tiny_model

__all__ = ["TINY_VERSION", "TinySpec", "default_cache_dir", "ensure_tiny_model", "is_complete"]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/agentkv/models``, or ``~/.cache/agentkv/models`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "agentkv" / "models"


def is_complete(folder: Path) -> bool:
    """True when ``folder`` holds a finished tiny model of the current version."""
    try:
        marker = json.loads((folder / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("version") == TINY_VERSION and (folder / "model.safetensors").is_file()


class _BuildLock:
    """Exclusive advisory lock on a file beside the target; a no-op where fcntl is missing."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd: int | None = None

    def __enter__(self) -> "_BuildLock":
        try:
            import fcntl
        except ImportError:
            return self
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _move_aside(target: Path) -> None:
    """Move an unfinished folder out of the way (only one racer's rename succeeds) and delete it."""
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.broken-"))
    try:
        os.rename(target, trash / "old")
    except FileNotFoundError:
        pass  # someone else moved it already
    shutil.rmtree(trash, ignore_errors=True)


def ensure_tiny_model(cache_dir: str | Path | None = None) -> Path:
    """Return the tiny model folder, building it first if it is not there yet.

    Args:
        cache_dir: folder that holds model folders; defaults to :func:`default_cache_dir`.

    Returns:
        ``<cache_dir>/tiny-v1``, complete and ready for ``from_pretrained``.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / TINY_VERSION
    if is_complete(target):
        return target
    root.mkdir(parents=True, exist_ok=True)
    with _BuildLock(root / f".{TINY_VERSION}.lock"):
        if is_complete(target):
            return target
        if target.exists():
            _move_aside(target)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{TINY_VERSION}.tmp-"))
        try:
            build_tiny_model(tmp, TinySpec())
            try:
                os.rename(tmp, target)
            except OSError:
                if not is_complete(target):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
