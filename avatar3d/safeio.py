"""Pickle-free storage of nested state, and the project's atomic writes of files and folders.

A "tree" is nested dicts / lists / tuples of tensors and plain values
(numbers, strings, bools, None): optimiser states, RNG states, counters. It
is stored as one safetensors file (the tensors) plus one JSON file (the
structure), so reading it back never runs code from the file. The structure
file records :data:`TREE_FORMAT`; one without it is version 1 (the same
encoding, written before the tag existed).

Every versioned file of the project refuses a format it does not know with
one line (:func:`check_format`): the file, the format it has, the one(s) this
avatar3d reads, and what to do.

A tree's folder is written through :func:`avatar3d.atomic.atomic_folder`: a
crash mid-write leaves the previous version intact.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from avatar3d.atomic import atomic_folder

TREE_TENSORS = "tensors.safetensors"
TREE_STRUCTURE = "structure.json"
TREE_FORMAT = "avatar3d.tree/1"


def save_tree(tree: Any, folder: str | Path) -> Path:
    """Write a nested structure of tensors / numbers / strings / lists / dicts, atomically."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(node: Any) -> Any:
        if isinstance(node, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = node
            return {"__tensor__": key}
        if isinstance(node, dict):
            return {"__dict__": [[encode(k), encode(v)] for k, v in node.items()]}
        if isinstance(node, tuple):
            return {"__tuple__": [encode(v) for v in node]}
        if isinstance(node, list):
            return [encode(v) for v in node]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"save_tree: cannot store a {type(node).__name__} (only tensors and plain values)")

    structure = encode(tree)
    tensors = unshared(tensors)
    with atomic_folder(folder) as tmp:
        save_file(tensors, str(tmp / TREE_TENSORS))
        (tmp / TREE_STRUCTURE).write_text(json.dumps({"format": TREE_FORMAT, "tree": structure}))
    return Path(folder)


def load_tree(folder: str | Path, device: str = "cpu") -> Any:
    """Read what :func:`save_tree` wrote."""
    folder = Path(folder)
    if not (folder / TREE_STRUCTURE).is_file():
        raise FileNotFoundError(f"no checkpoint data in {folder} (missing {TREE_STRUCTURE})")
    structure = json.loads((folder / TREE_STRUCTURE).read_text())
    if isinstance(structure, dict) and "format" in structure:  # an encoded node never has this key
        check_format(folder / TREE_STRUCTURE, structure["format"], TREE_FORMAT,
                     "read it with the avatar3d release that wrote it")
        structure = structure["tree"]
    # else: version 1 without the tag, the same encoding
    tensors = load_file(str(folder / TREE_TENSORS), device=device)

    def decode(node: Any) -> Any:
        if isinstance(node, dict):
            if "__tensor__" in node:
                return tensors[node["__tensor__"]]
            if "__tuple__" in node:
                return tuple(decode(v) for v in node["__tuple__"])
            return {decode(k): decode(v) for k, v in node["__dict__"]}
        if isinstance(node, list):
            return [decode(v) for v in node]
        return node

    return decode(structure)


def check_format(path: str | Path, found: Any, known: str | Sequence[str], remedy: str, field: str = "") -> None:
    """Refuse a file whose recorded format tag ``found`` is not one of ``known``: one line, a ValueError
    naming ``field`` (the option that pointed at the file, if any), the file, both formats, and ``remedy``."""
    known = (known,) if isinstance(known, str) else tuple(known)
    if found not in known:
        reads = " or ".join(repr(k) for k in known)
        prefix = f"{field}: " if field else ""
        raise ValueError(f"{prefix}{path} has format {found!r}, this avatar3d reads {reads}; {remedy}")


def unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU, contiguous tensors, copying any that share storage with an earlier one
    (safetensors refuses shared memory; modules often share buffers)."""
    out, seen = {}, set()
    for key, t in tensors.items():
        t = t.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen and t.numel():
            t = t.clone()
        seen.add(ptr)
        out[key] = t
    return out
