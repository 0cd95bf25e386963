"""The storage layer of checkpoints: a directory of safetensors files and one JSON file, written atomically.

It knows nothing of learners, models or optimizers: it stores nested JSON-able data whose tensors
live in safetensors files (`encode` / `decode`), writes a checkpoint directory so that a crash at any
moment leaves the previous one loadable (`write_directory`: a hidden sibling, fsync, rename aside,
rename in), and reads one back only after checking every file's size and checksum (`read_metadata`,
`read_tensors`). Loading uses safetensors and json only, so reading a checkpoint never runs code.
`fitorch.checkpoint` builds on it: what a learner's checkpoint holds and how it is restored.
"""

from __future__ import annotations

import json
import mmap
import os
import secrets
import shutil
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fitorch.run_lock import process_exists

FORMAT_NAME = "fitorch-checkpoint"
FORMAT_VERSION = 2  # 2: checkpoint.json carries a checksum of its own content
METADATA_FILE = "checkpoint.json"
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.safetensors"

# How values that JSON cannot hold are tagged: a tensor lives in a safetensors file under a name,
# tuples and dicts with non-string keys (an optimizer's `state`) keep their type on the way back.
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


def encode(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able `value`, with its tensors moved into `tensors` under names starting with `name`."""
    if isinstance(value, torch.Tensor):
        while name in tensors:  # keys containing dots could collide; keep both
            name += "_"
        tensors[name] = value.detach()
        return {_TENSOR: name}
    if isinstance(value, Mapping):
        if all(isinstance(key, str) for key in value):
            return {key: encode(item, f"{name}.{key}", tensors) for key, item in value.items()}
        return {
            _ITEMS: [[encode(key, name, {}), encode(item, f"{name}.{key}", tensors)] for key, item in value.items()]
        }
    if isinstance(value, (tuple, list)):
        items = [encode(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"Cannot store {name} in a checkpoint: a {type(value).__name__} is neither JSON nor a tensor. "
        "state_dict() must return JSON-able values and tensors (convert it, e.g. to a list or a str)."
    )


def decode(value: Any, tensors: Mapping[str, torch.Tensor] | None, path: str) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, list):
        return [decode(item, tensors, path) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and _TENSOR in value:
        if tensors is None or value[_TENSOR] not in tensors:
            raise ValueError(
                f"Checkpoint {path!r} is damaged: {STATE_FILE} lacks the tensor {value[_TENSOR]!r} "
                f"that {METADATA_FILE} refers to. Use another checkpoint."
            )
        return tensors[value[_TENSOR]]
    if len(value) == 1 and _TUPLE in value:
        return tuple(decode(item, tensors, path) for item in value[_TUPLE])
    if len(value) == 1 and _ITEMS in value:
        return {decode(key, tensors, path): decode(item, tensors, path) for key, item in value[_ITEMS]}
    return {key: decode(item, tensors, path) for key, item in value.items()}


def view_key(tensor: torch.Tensor) -> tuple:
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tuple(tensor.stride()))


def _writable(tensors: dict[str, torch.Tensor], what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What safetensors can write, which refuses shared memory: each exact duplicate (a tied weight)
    becomes an alias of the first name holding it; a tensor overlapping another's memory is copied."""
    unique, aliases, first_name, storages = {}, {}, {}, set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"Cannot save {what} entry {name!r}: a {type(tensor).__name__}, not a tensor.")
        view = view_key(tensor)
        if tensor.numel() and view in first_name:
            aliases[name] = first_name[view]
            continue
        storage = (tensor.device, tensor.untyped_storage().data_ptr())
        shares = tensor.numel() and storage in storages
        unique[name] = tensor.clone() if shares else tensor.contiguous()
        first_name[view] = name
        storages.add(storage)
    return unique, aliases


def hidden_name(path: str, kind: str) -> str:
    return f".{os.path.basename(os.path.abspath(path))}.{kind}"


def aside_path(path: str) -> str:
    """Where the previous checkpoint waits while a new one is renamed into its place."""
    return os.path.join(os.path.dirname(os.path.abspath(path)), hidden_name(path, "old"))


def is_checkpoint(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, METADATA_FILE))


def logical_name(parent: str, name: str) -> str | None:
    """The checkpoint name a folder entry stands for: itself, or for a copy left aside whose checkpoint is
    gone (a kill between the two renames of a save), the name it was moved from; None for other hidden ones."""
    if not name.startswith("."):
        return name
    original = name[1 : -len(".old")]
    if name.endswith(".old") and original and not os.path.exists(os.path.join(parent, original)):
        return original
    return None


def check_replaceable(path: str) -> None:
    """Refuse to replace or delete something that is not a checkpoint (an empty folder is fine)."""
    if os.path.isdir(path) and (not os.listdir(path) or os.path.isfile(os.path.join(path, METADATA_FILE))):
        return
    raise ValueError(
        f"{path!r} exists and is not a fitorch checkpoint (no {METADATA_FILE}); refusing to replace "
        "or delete it. Choose another path, or remove it yourself."
    )


def clean_leftovers(path: str) -> None:
    """Finish or undo what killed saves and deletions left beside `path` (main process only).

    The copy of `path` set aside by a save killed between its renames is moved back or dropped; the
    half-deleted folders of killed deletions (`.NAME.del-*`) of any checkpoint in the folder are
    removed, and so are unfinished writes (`.NAME.tmp-PID-*`) of processes that are gone.
    """
    parent, aside = os.path.dirname(os.path.abspath(path)), aside_path(path)
    if os.path.isdir(aside):
        if os.path.exists(path):
            shutil.rmtree(aside)  # killed after the new copy was in place: the old one is done with
        else:
            os.replace(aside, path)  # killed between the two renames: the old copy is the checkpoint
    for entry in os.scandir(parent):
        if entry.name.startswith(".") and _abandoned(entry.name, path):
            shutil.rmtree(entry.path, ignore_errors=True)


def _abandoned(name: str, path: str) -> bool:
    """Whether a hidden folder is a killed deletion, or an unfinished write nobody will finish."""
    if ".del-" in name:
        return True
    head, marker, rest = name.rpartition(".tmp-")
    if not marker:
        return False
    if head == hidden_name(path, "")[:-1]:
        return True  # an earlier write of this very checkpoint: this save replaces it
    pid = rest.split("-", 1)[0]
    return pid.isdigit() and int(pid) != os.getpid() and not process_exists(int(pid))


def write_directory(path: str, files: dict[str, dict[str, torch.Tensor]], metadata: dict[str, Any]) -> None:
    """Write a complete checkpoint beside `path`, fsync it, then rename it into place.

    To replace an existing checkpoint: rename it aside, rename the new one in, delete the old one.
    A kill between the two renames leaves only the aside copy, which loading falls back to and the
    next save moves back; see docs/checkpoints.md.
    """
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    clean_leftovers(path)
    if os.path.exists(path):
        check_replaceable(path)
    temp = os.path.join(parent, hidden_name(path, f"tmp-{os.getpid()}-{secrets.token_hex(4)}"))
    try:
        os.mkdir(temp)  # not tempfile.mkdtemp: its private 0o700 mode would stay on the renamed checkpoint
        for name, tensors in files.items():
            writable, aliases = _writable(tensors, name)
            metadata["files"][name] = {**write_tensors(os.path.join(temp, name), writable), "aliases": aliases}
        write_json(os.path.join(temp, METADATA_FILE), metadata)  # last: names every file above
        _fsync_directory(temp)
        if os.path.exists(path):
            os.replace(path, aside_path(path))
        os.replace(temp, path)
        _fsync_directory(parent)  # the renames themselves reach the disk
    except OSError as error:
        shutil.rmtree(temp, ignore_errors=True)
        raise OSError(
            error.errno,
            f"Cannot write the checkpoint {path!r}: {error.strerror or error}. The previous checkpoint there, if "
            "any, is intact. Free space on that disk (or fix its permissions), or save somewhere else.",
            error.filename,
        ) from error
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    shutil.rmtree(aside_path(path), ignore_errors=True)


_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


def write_tensors(file: str, tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Write a safetensors file straight from the tensors' memory, checksumming the bytes as they go, and fsync it.

    `safetensors.torch.save_file` first copies every tensor into one bytes object; writing each
    tensor's own buffer saves that copy and the read-back for the checksum (docs/performance.md).
    The result is a standard safetensors file: `load_file` reads it, and the tests check that.
    """
    if any(tensor.dtype not in _SAFETENSORS_DTYPES for tensor in tensors.values()):
        save_file(tensors, file, metadata={"format": "pt"})  # rarer dtypes: let safetensors encode them
        with open(file, "r+b") as handle:  # writable: Windows cannot fsync a read-only handle
            checksum = _crc32(handle)
            os.fsync(handle.fileno())
        return {"bytes": os.path.getsize(file), "crc32": checksum}
    buffers, header, offset = [], {"__metadata__": {"format": "pt"}}, 0
    for name, tensor in tensors.items():
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        header[name] = {"dtype": _SAFETENSORS_DTYPES[tensor.dtype], "shape": list(tensor.shape)}
        header[name]["data_offsets"] = [offset, offset + data.nbytes]
        buffers.append(data)
        offset += data.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-(8 + len(encoded)) % 8)  # tensor data starts 8-byte aligned, as safetensors writes it
    checksum, size = 0, 0
    with open(file, "wb") as handle:
        for chunk in (len(encoded).to_bytes(8, "little"), encoded, *buffers):
            handle.write(chunk)
            checksum, size = zlib.crc32(chunk, checksum), size + len(chunk)  # bytes, or 1-D uint8 arrays
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": size, "crc32": checksum}


def _crc32(handle: Any) -> int:
    """CRC-32 of an open file, read through a memory map: no copy, just the pages of the page cache."""
    if os.fstat(handle.fileno()).st_size == 0:
        return zlib.crc32(b"")
    with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return zlib.crc32(view)


_JSON_CHECKSUM = "json_crc32"


def _json_checksum(data: Mapping[str, Any]) -> int:
    """CRC-32 of `data` without its checksum field, serialised canonically (sorted keys, no spaces)."""
    content = {key: value for key, value in data.items() if key != _JSON_CHECKSUM}
    return zlib.crc32(json.dumps(content, sort_keys=True, separators=(",", ":")).encode())


def write_json(file: str, data: dict[str, Any]) -> None:
    """Write `data` with a checksum of its own content, and fsync it; `read_json` verifies it."""
    data[_JSON_CHECKSUM] = _json_checksum(data)
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: str) -> None:
    if os.name == "nt":  # Windows cannot open a directory; its renames are durable without this
        return
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def resolve(path: str | os.PathLike) -> str:
    """The directory to read for `path`: itself, or the aside copy a killed save left."""
    path = os.fspath(path)
    if is_checkpoint(path):
        return path
    if not os.path.exists(path):
        if is_checkpoint(aside_path(path)):
            return aside_path(path)
        raise FileNotFoundError(f"No checkpoint at {path!r}: the path does not exist.")
    raise ValueError(
        f"{path!r} is not a fitorch checkpoint: it has no {METADATA_FILE}. "
        "Pass a directory written by save_checkpoint, or a .safetensors file to load_weights."
    )


def read_metadata(directory: str) -> dict[str, Any]:
    """The checkpoint's `checkpoint.json`, after checking its format, version and checksum.

    Raises:
        ValueError: the file is unreadable, not a fitorch checkpoint description, of a newer format
            version, damaged (its content does not match its checksum), or lacks the list of files.
    """
    file = os.path.join(directory, METADATA_FILE)
    damaged = f"Checkpoint {directory!r}: {METADATA_FILE} is damaged"
    try:
        with open(file, encoding="utf-8") as handle:
            metadata = json.load(handle)
    except (OSError, ValueError, RecursionError) as error:
        raise ValueError(f"{damaged} ({type(error).__name__}: {error}); use another checkpoint.") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"Checkpoint {directory!r}: {METADATA_FILE} is not a fitorch checkpoint description.")
    version = metadata.get("format_version")
    if type(version) is not int or version < 1:
        raise ValueError(f"{damaged}: format_version is {version!r}, not a version number; use another checkpoint.")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"Checkpoint {directory!r} has format version {version!r}, written by a newer fitorch "
            f"(fitorch {metadata.get('fitorch_version')}); this fitorch reads format version "
            f"{FORMAT_VERSION} and older. Upgrade fitorch: pip install -U fitorch."
        )
    if version >= 2 and metadata.get(_JSON_CHECKSUM) != _json_checksum(metadata):
        raise ValueError(
            f"{damaged}: its content does not match its checksum (corrupted or edited); use another checkpoint."
        )
    if not isinstance(metadata.get("files"), dict) or not all(
        isinstance(entry, dict)
        and type(entry.get("bytes")) is int
        and type(entry.get("crc32")) is int
        and isinstance(entry.get("aliases", {}), dict)
        for entry in metadata["files"].values()
    ):
        raise ValueError(f"{damaged}: its list of files is missing or malformed; use another checkpoint.")
    return metadata


def read_tensors(directory: str, name: str, metadata: dict[str, Any], own: bool = False) -> dict[str, torch.Tensor]:
    """Load one safetensors file of a checkpoint after checking its size and checksum.

    safetensors maps the file into memory; `own=True` copies the tensors out, for what is kept (the
    optimizer's state) rather than copied into a model: a mapped file that a later save deletes would
    keep its disk space until the process ends, and Windows could not delete it at all.
    """
    file, expected = os.path.join(directory, name), metadata["files"].get(name)
    if expected is None or not os.path.isfile(file):
        raise ValueError(f"Checkpoint {directory!r} is incomplete: {name} is missing. Use another checkpoint.")
    size = os.path.getsize(file)
    if size != expected["bytes"]:
        raise ValueError(
            f"Checkpoint {directory!r}: {name} has {size} bytes, {METADATA_FILE} recorded "
            f"{expected['bytes']}; the file is truncated or damaged. Use another checkpoint."
        )
    with open(file, "rb") as handle:
        checksum = _crc32(handle)
    if checksum != expected["crc32"]:
        raise ValueError(
            f"Checkpoint {directory!r}: {name} does not match the checksum recorded in {METADATA_FILE}; "
            "the file is corrupted or was modified. Use another checkpoint."
        )
    tensors = load_tensor_file(file)
    if own:
        tensors = {key: value.clone() for key, value in tensors.items()}
    for alias, name_held in expected.get("aliases", {}).items():
        tensors[alias] = tensors[name_held]
    return tensors


def load_tensor_file(file: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(file)
    except (SafetensorError, ValueError, OSError) as error:
        raise ValueError(
            f"{file!r} is not a readable safetensors file ({error}); it is truncated or corrupted. "
            "Use another checkpoint."
        ) from None


def find_checkpoints(directory: str) -> list[str]:
    """Every checkpoint at or under `directory`, by the name it stands for (all depths).

    A copy left aside by a save killed between its two renames counts in place of the checkpoint it
    stands for; hidden folders (unfinished writes, deletions, other tools' state) are not searched.
    """
    if is_checkpoint(directory) or (not os.path.exists(directory) and is_checkpoint(aside_path(directory))):
        return [directory]
    found = []
    for parent, names, _ in os.walk(directory):
        descend = []
        for name in names:
            logical = logical_name(parent, name)
            if logical is not None and is_checkpoint(os.path.join(parent, name)):
                found.append(os.path.join(parent, logical))
            elif not name.startswith("."):
                descend.append(name)
        names[:] = descend
    return found


def delete_directory(path: str) -> bool:
    """Delete the checkpoint directory `path` and any copy of it left aside; False when there was none.

    It is first renamed to a hidden name, so a crash during the deletion never leaves a half-deleted
    checkpoint that looks loadable (the next save of that name removes the hidden rest).
    """
    aside, deleted = aside_path(path), False
    if os.path.exists(path):
        check_replaceable(path)
        trash = os.path.join(os.path.dirname(os.path.abspath(path)), hidden_name(path, f"del-{secrets.token_hex(4)}"))
        os.replace(path, trash)
        shutil.rmtree(trash)
        deleted = True
    if os.path.isdir(aside):
        shutil.rmtree(aside)
        deleted = True
    return deleted
