"""Was a file written whole? Cheap checks of what a save writes (safetensors, torch.save zips, JSON).

A save cut short by a kill, a full disk or a partial copy leaves files that fail deep inside
safetensors or torch with a traceback that names neither the file nor the fix. These checks read
headers and zip directories only (not the tensors), so checking a multi-GB checkpoint costs
milliseconds, and they name what is wrong in a phrase that follows the file's name:
``"adapter_model.safetensors is cut short: ..."``.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

#: torch.save's format since torch 1.6 is a zip; older pickles cannot be checked without loading them.
_ZIP_MAGIC = b"PK\x03\x04"
#: A safetensors header larger than this is not a header (the format caps it at 100 MB).
_MAX_HEADER = 100 * 1024 * 1024


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (its size must be 8 + header + the last tensor's end)."""
    size = path.stat().st_size
    if size < 8:
        return f"is cut short ({size} bytes: not even the 8-byte header length of a safetensors file)"
    with path.open("rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if length > _MAX_HEADER:
            return "is not a safetensors file (its first 8 bytes are not a header length)"
        if 8 + length > size:
            return f"is cut short: {size} bytes, but its header alone takes {8 + length}"
        try:
            header = json.loads(f.read(length))
        except (ValueError, UnicodeDecodeError):
            return "has an unreadable header (damaged, or not a safetensors file)"
    if not isinstance(header, dict):
        return "has an unreadable header (damaged, or not a safetensors file)"
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            end = max(end, int(info["data_offsets"][1]))
        except (TypeError, KeyError, IndexError, ValueError):
            return f"has an unreadable header (tensor {name!r} has no data_offsets)"
    expected = 8 + length + end
    if size < expected:
        return f"is cut short: {size} bytes, but its header says {expected}"
    if size > expected:
        return f"is {size} bytes, but its header says {expected} (damaged)"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why ``path`` (written by torch.save: optimizer.pt, rng_state.pth, *.bin) is not whole.

    The zip's directory sits at its end, so a file cut short has none; a member that reaches past the
    end of the file is cut short too. A pre-zip pickle is not checked (None).
    """
    size = path.stat().st_size
    if size == 0:
        return "is empty"
    with path.open("rb") as f:
        if f.read(4) != _ZIP_MAGIC:
            return None
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return f"is cut short or damaged ({size} bytes, and the end of the torch.save archive is missing)"
    for member in members:
        if member.header_offset + member.compress_size > size:
            return f"is cut short ({size} bytes; {member.filename} reaches past the end)"
    return None


def json_problem(path: Path) -> str | None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        return "is not UTF-8 text (damaged)"
    except ValueError as exc:
        return f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}): cut short or damaged"
    return None


def file_problem(path: Path) -> str | None:
    """The check that fits ``path``'s kind, or None for kinds that are not checked."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return safetensors_problem(path)
    if suffix in (".pt", ".pth", ".bin"):
        return torch_file_problem(path)
    if suffix == ".json":
        return json_problem(path)
    return None


def shard_index_problem(path: Path) -> str | None:
    """A ``*.index.json`` of sharded weights: every shard it lists must be beside it."""
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8")).get("weight_map") or {}
    except (ValueError, UnicodeDecodeError, AttributeError):
        return None  # json_problem reports it
    missing = sorted({shard for shard in weight_map.values() if not (path.parent / str(shard)).is_file()})
    if missing:
        return f"lists {len(missing)} shard(s) that are missing: {', '.join(missing[:3])}"
    return None


def folder_problem(folder: Path) -> str | None:
    """The first damaged file under ``folder`` as ``"NAME <what is wrong>"`` (NAME relative to folder), or None."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        problem = file_problem(path)
        if problem is None and path.name.endswith(".index.json"):
            problem = shard_index_problem(path)
        if problem is not None:
            return f"{path.relative_to(folder)} {problem}"
    return None
