"""Checkpoints that cannot silently lose or corrupt training.

A checkpoint is two files: the weights (`.eqx`, equinox's leaf serialisation) and a JSON record
holding the SHA-256 of the weight bytes. Both are written to a temporary name first and then
renamed, so an interrupted write leaves the previous checkpoint intact, and a file whose bytes
changed afterwards (a bad disk, a truncated copy) fails its checksum and is refused.
"""

import hashlib
import json
import os
import pathlib
from typing import Any

import equinox as eqx


class CheckpointError(Exception):
    """A checkpoint that is missing a file, fails its checksum or does not fit the network."""


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _replace(tmp: pathlib.Path, path: pathlib.Path) -> None:
    # flush to disk before the rename so a crash cannot leave a renamed but empty file
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(path: pathlib.Path, tree: Any, record: dict) -> None:
    """Write `tree` to `path` (`.eqx`) and `record` plus the weights' checksum beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    eqx.tree_serialise_leaves(tmp, tree)
    digest = sha256(tmp)
    meta_tmp = tmp.with_suffix(".json.tmp")
    meta_tmp.write_text(json.dumps({**record, "sha256": digest}, allow_nan=False))
    # the weights first: a record always describes the weights already in place
    _replace(tmp, path)
    _replace(meta_tmp, record_path(path))


def record_path(path: pathlib.Path) -> pathlib.Path:
    return path.with_suffix(".json")


def load(path: pathlib.Path, like: Any) -> tuple[Any, dict]:
    """Read the checkpoint at `path` into the structure of `like`; raise `CheckpointError` when a
    file is missing, the weights fail their checksum, or they do not fit `like`."""
    meta = record_path(path)
    if not (path.is_file() and meta.is_file()):
        raise CheckpointError(f"{path.name} or its record is missing")
    try:
        record = json.loads(meta.read_text())
    except ValueError as e:
        raise CheckpointError(f"{meta.name} is not valid JSON ({e})") from None
    if record.get("sha256") != sha256(path):
        raise CheckpointError(f"{path.name} fails its SHA-256 checksum (corrupted)")
    try:
        tree = eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # a different network: equinox names the leaf that does not fit
        raise CheckpointError(f"{path.name} does not fit the network ({e})") from None
    return tree, record


def remove(path: pathlib.Path) -> None:
    for p in (path, record_path(path)):
        p.unlink(missing_ok=True)
