"""Writer side of the OC20 format: pickles that a PyG 2.x ``Data`` of torch tensors would produce, without PyG or torch.

:func:`encode_data` emits the opcodes ``pickle.dumps(torch_geometric.data.Data(...))`` writes (``_store`` /
``GlobalStorage`` of PyG 2.x, or PyG 1.x's plain ``__dict__``), with each numpy array as the legacy
``torch.save`` bytes of a tensor of the same dtype. :mod:`mlip_datasets.safe_pickle` reads them back.
"""

from __future__ import annotations

import io
import pickle
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import safe_pickle

__all__ = ["encode_data"]


@dataclass(eq=False)
class _Global:
    """``module.name`` written as a pickle global without importing it (torch/PyG need not be installed)."""

    module: str
    name: str


@dataclass(eq=False)
class _Reduce:
    func: _Global
    args: tuple


@dataclass(eq=False)
class _NewObj:
    cls: _Global
    state: Any = None


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, taught to write :class:`_Global`/:class:`_Reduce`/:class:`_NewObj` as opcodes."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global(self, obj: _Global):
        self.save(obj.module)
        self.save(obj.name)
        self.write(pickle.STACK_GLOBAL)
        self.memoize(obj)

    def _save_reduce(self, obj: _Reduce):
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def _save_newobj(self, obj: _NewObj):
        self.save(obj.cls)
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)  # before the state, which may point back here (PyG's storage._parent)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[_Global], dispatch[_Reduce], dispatch[_NewObj] = _save_global, _save_reduce, _save_newobj


_STORAGE_NAMES = {np.dtype(v).newbyteorder("<"): k for k, v in safe_pickle._STORAGE_DTYPES.items()}
del _STORAGE_NAMES[np.dtype("<u2")]  # BFloat16Storage: read as uint16 bits, never written
_VERSION = safe_pickle.TORCH_PROTOCOL
_SYS_INFO = {"protocol_version": _VERSION, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
_TORCH_HEAD = b"".join(pickle.dumps(x, protocol=2) for x in (safe_pickle.TORCH_MAGIC, _VERSION, _SYS_INFO))
_REBUILD = _Global("torch._utils", "_rebuild_tensor_v2")
_LOAD_BYTES = _Global("torch.storage", "_load_from_bytes")
_ORDERED_DICT = _Global("collections", "OrderedDict")


def _tensor(array: np.ndarray) -> _Reduce:
    """A torch tensor as torch pickles it: ``_rebuild_tensor_v2(_load_from_bytes(legacy torch.save bytes), ...)``."""
    a = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    name = _STORAGE_NAMES[a.dtype].encode()
    key = b"X\x01\x00\x00\x000"  # storage key "0" as BINUNICODE
    pid = (
        b"\x80\x02(X\x07\x00\x00\x00storage"
        + b"ctorch\n"
        + name
        + b"\n"
        + key
        + b"X\x03\x00\x00\x00cpu"
        + pickle.dumps(a.size, protocol=2)[2:-1]
        + b"NtQ."
    )  # ("storage", torch.XStorage, "0", "cpu", n, None)
    raw = _TORCH_HEAD + pid + b"\x80\x02]" + key + b"a." + struct.pack("<q", a.size) + a.tobytes()
    strides = tuple(int(np.prod(a.shape[i + 1 :])) for i in range(a.ndim))
    return _Reduce(_REBUILD, (_Reduce(_LOAD_BYTES, (raw,)), 0, a.shape, strides, False, _Reduce(_ORDERED_DICT, ())))


def encode_data(fields: dict, layout: str = "pyg2") -> bytes:
    """Pickle ``fields`` as a ``torch_geometric.data.Data``: numpy arrays become tensors of the same dtype.

    ``layout="pyg2"`` writes PyG 2.x's ``_store``/``GlobalStorage``; ``"pyg1"`` the attributes as ``__dict__``.
    """
    mapping = {k: _tensor(v) if isinstance(v, np.ndarray) else v for k, v in fields.items()}
    data = _NewObj(_Global("torch_geometric.data.data", "Data"))
    if layout == "pyg1":
        data.state = mapping
    else:
        storage = _Global("torch_geometric.data.storage", "GlobalStorage")
        store = _NewObj(storage, {"_mapping": mapping, "_parent": data})
        data.state = {
            "_edge_attr_cls": _Global("torch_geometric.data.data", "DataEdgeAttr"),
            "_tensor_attr_cls": _Global("torch_geometric.data.data", "DataTensorAttr"),
            "_store": store,
        }
    out = io.BytesIO()
    _Pickler(out, protocol=4).dump(data)
    return out.getvalue()
