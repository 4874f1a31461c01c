"""Restricted unpickling of OC20/OC22 LMDB records: torch tensors and PyG ``Data`` without torch or PyG.

OC20/OC22 legacy records are pickled ``torch_geometric.data.Data`` objects holding torch tensors. Plain
``pickle.loads`` would run whatever callable a file names, so :func:`loads` resolves every global through a
fixed allow-list and refuses anything else before it is called. What is allowed, and why:

- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter[_with_state]`` and
  ``torch._tensor._rebuild_from_type_v2``: how ``torch.Tensor`` (and ``Parameter``) pickle, in torch 1.x and 2.x.
- ``torch.storage._load_from_bytes``: a tensor's storage pickles as the bytes of a legacy ``torch.save``. torch
  would ``torch.load`` them (with ``weights_only=False``); we never call torch: :func:`_load_legacy_storage`
  parses that small format with numpy, through a second unpickler that allows only ``torch.*Storage`` names.
- ``collections.OrderedDict`` (a tensor's backward hooks), ``_codecs.encode`` (bytes in protocol < 3 pickles),
  ``builtins`` set/frozenset/bytearray/complex/slice/object and ``copyreg._reconstructor`` (protocol < 2
  objects) restricted to our own holder classes.
- numpy ``_reconstruct``/``ndarray``/``dtype``/``scalar``/``_frombuffer``: numpy arrays and scalars. They go
  through stand-ins: numpy's own ``dtype.__setstate__`` accepts field offsets past the item size (an
  out-of-bounds read later), so structured/void dtypes and dtype states with fields are refused.
- ``torch_geometric.data`` ``Data``, ``GlobalStorage``/``BaseStorage``/``NodeStorage``/``EdgeStorage``,
  ``DataEdgeAttr``/``DataTensorAttr`` (and ``TensorAttr``/``EdgeAttr``): mapped onto :class:`PygData`/
  :class:`PygStorage` and inert markers, so ``torch_geometric`` (and torch) are never imported while reading.

Tensors come back as numpy arrays. Every allowed callable is a frozen wrapper and every class is frozen, so a
pickle's BUILD opcodes cannot rewrite them between records.

A pickle's memo lets a few bytes name one object many times, so a small record can describe a huge value (a
``torch.expand``-ed tensor is a stride-0 view of a one-element storage; ``a = [a, a]`` repeated is 2**n
items). Each record therefore gets a budget: everything the unpickler materialises (storage bytes, tensor and
array copies, set/dict items) is charged against ``RECORD_ALLOWANCE + RECORD_FACTOR * len(record)`` bytes,
and the finished value's size with shared objects counted at every place they appear (what a consumer such
as ``numpy.asarray`` would walk) is bounded the same way. Shared objects are resolved once, so the work is
linear in the pickle's size; a record over the budget, or holding a reference cycle, is refused with a
:class:`DataError` naming the limit.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from .errors import DataError, UnsafePickleError

TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of every legacy torch.save stream
TORCH_PROTOCOL = 1001
RECORD_ALLOWANCE = 64 << 20  # bytes any record may materialise...
RECORD_FACTOR = 64  # ...plus this many times its own pickled size
_ITEM_BYTES = 8  # what one item of a list/tuple/dict/set is charged (a pointer)


class _Frozen(type):
    """Metaclass that forbids setting class attributes (a pickle's BUILD could otherwise patch our classes)."""

    def __setattr__(cls, name, value):
        raise TypeError(f"{cls.__name__} is read-only")

    def __delattr__(cls, name):
        raise TypeError(f"{cls.__name__} is read-only")


class _Allowed:
    """An allow-listed callable; immutable so that BUILD cannot change its defaults."""

    __slots__ = ("_fn", "_name")

    def __init__(self, fn: Callable, name: str):
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args):
        return self._fn(*args)

    def __setattr__(self, name, value):
        raise TypeError(f"{self._name} is read-only")

    def __setstate__(self, state):
        raise pickle.UnpicklingError(f"BUILD on {self._name} is not allowed")

    def __repr__(self) -> str:
        return f"<allowed {self._name}>"


class _Refused(Exception):
    """Raised inside the unpickler; :func:`loads` turns it into :class:`UnsafePickleError`."""


class _OverBudget(Exception):
    """Raised inside the unpickler when a record would materialise more than its budget; becomes DataError."""


class _Budget:
    __slots__ = ("limit", "used")

    def __init__(self, limit: int):
        self.limit, self.used = limit, 0


_state = threading.local()  # the budget of the record being read by this thread


def _limit_text(limit: int) -> str:
    return f"{limit / 2**20:.0f} MiB"


def _charge(nbytes: int, what: str) -> None:
    """Count ``nbytes`` about to be allocated for ``what`` against the current record's budget."""
    budget = getattr(_state, "budget", None)
    if budget is None:
        return
    budget.used += int(nbytes)
    if budget.used > budget.limit:
        raise _OverBudget(f"{what} would take the decoded record past its limit of {_limit_text(budget.limit)}")


def _no_build(self, state):
    raise pickle.UnpicklingError(f"BUILD on {type(self).__name__} is not allowed")


class PygStorage(metaclass=_Frozen):
    """Stand-in for a PyG 2.x ``GlobalStorage``: keeps ``_mapping`` (the attributes), drops ``_parent``."""

    __slots__ = ("mapping",)

    def __setstate__(self, state):
        state = state[0] if isinstance(state, tuple) else state
        mapping = state.get("_mapping") if isinstance(state, dict) else None
        if not isinstance(mapping, dict):
            raise pickle.UnpicklingError("PyG storage state has no _mapping dict")
        self.mapping = mapping


class PygData(metaclass=_Frozen):
    """Stand-in for ``torch_geometric.data.Data``.

    ``fields`` holds the attributes, ``layout`` is ``"pyg2"`` (state holds ``_store``) or ``"pyg1"`` (attributes
    directly in the pickled ``__dict__``, as in the released OC20 files).
    """

    __slots__ = ("fields", "layout")

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"Data state is a {type(state).__name__}, expected a dict")
        store = state.get("_store")
        if store is not None:
            if not isinstance(store, PygStorage):
                raise pickle.UnpicklingError("Data._store is not a PyG storage")
            self.fields, self.layout = dict(store.mapping), "pyg2"
        else:
            # PyG 1.x keeps attributes in __dict__, plus "__num_nodes__" when set by hand
            self.fields = {("num_nodes" if k == "__num_nodes__" else k): v for k, v in state.items()}
            self.layout = "pyg1"


class _Marker(metaclass=_Frozen):
    """Inert stand-in for a class that only appears as a value (torch.Tensor, numpy.ndarray, DataEdgeAttr...)."""


def _marker(name: str) -> type:
    return _Frozen(name, (_Marker,), {"__slots__": ()})


_TENSOR, _PARAMETER, _NDARRAY, _OBJECT = (_marker(n) for n in ("Tensor", "Parameter", "ndarray", "object"))
_EDGE_ATTR, _TENSOR_ATTR = _marker("DataEdgeAttr"), _marker("DataTensorAttr")
_HOLDERS = (PygData, PygStorage)


# ---- tensors -------------------------------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
    "ComplexFloatStorage": "<c8",
    "ComplexDoubleStorage": "<c16",
}  # torch writes storage bytes little-endian on every platform


class _StorageKind:
    __slots__ = ("name", "dtype")
    __setstate__ = _no_build

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    """One typed storage read from legacy torch.save bytes; ``array`` is 1-D (bfloat16 already widened)."""

    __slots__ = ("kind", "numel", "array")
    __setstate__ = _no_build

    def __init__(self, kind: _StorageKind, numel: int):
        self.kind, self.numel, self.array = kind, numel, None


def _rebuild_tensor(storage, offset, size, stride, *_ignored) -> np.ndarray:
    """numpy copy of ``storage`` viewed with torch's offset/size/stride, bounds-checked before any view."""
    if not isinstance(storage, _Storage) or storage.array is None:
        raise pickle.UnpicklingError("tensor storage is missing or unread")
    ints = (offset, *size, *stride)
    if not all(type(v) is int for v in ints) or len(size) != len(stride) or min(ints, default=0) < 0:
        raise pickle.UnpicklingError(f"bad tensor geometry offset={offset} size={size} stride={stride}")
    base = storage.array
    if 0 in size:
        return np.zeros(size, dtype=base.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(base):
        raise pickle.UnpicklingError(f"tensor reaches element {last} of a storage of {len(base)}")
    numel = math.prod(size)
    note = "" if numel <= len(base) - offset else f" (an overlapping or stride-0 view of {len(base)} stored elements)"
    _charge(numel * base.itemsize, f"a tensor of shape {str(tuple(size))[:80]}{note}")
    view = np.lib.stride_tricks.as_strided(base[offset:], shape=size, strides=[s * base.itemsize for s in stride])
    return np.array(view)  # copy: owns its memory, writable


def _rebuild_parameter(data, *_ignored):
    return data


def _rebuild_from_type_v2(func, new_type, args, _state):
    # a Tensor with Python attributes: rebuild the tensor, drop the attributes
    if func not in _TENSOR_REBUILDS or new_type not in (_TENSOR, _PARAMETER) or not isinstance(args, tuple):
        raise pickle.UnpicklingError("unexpected _rebuild_from_type_v2 arguments")
    return func(*args)


class _LegacyTorchUnpickler(pickle.Unpickler):
    """Reads the object pickle inside legacy torch.save bytes: storage types and persistent ids only."""

    def __init__(self, file):
        super().__init__(file)
        self.storages: dict[str, _Storage] = {}
        self.views: list[tuple[_Storage, str, int]] = []

    def find_class(self, module, name):
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageKind(name)
        raise _Refused(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
            raise _Refused(f"torch persistent id {str(pid)[:60]}")  # e.g. ("module", ...) carries source code
        _, kind, key, _location, numel, view = pid
        if not isinstance(kind, _StorageKind) or type(numel) is not int or numel < 0:
            raise pickle.UnpicklingError("bad storage record in tensor bytes")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        root = self.storages.setdefault(key, _Storage(kind, numel))
        if view is None:
            return root
        view_key, view_offset, view_numel = view  # storage views: torch < 1.0 only
        out = _Storage(kind, view_numel)
        self.views.append((out, key, view_offset))
        return out


def _load_legacy_storage(data) -> _Storage:
    """Parse legacy ``torch.save`` bytes of one storage (what ``_load_from_bytes`` receives) without torch.

    Layout: pickles of the magic number, the protocol version and a sys-info dict; the object pickle (storages
    as persistent ids); a pickled list of storage keys; then per key an int64 element count and the raw bytes.
    """
    if not isinstance(data, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage bytes are missing")
    f = io.BytesIO(data)
    if _LegacyTorchUnpickler(f).load() != TORCH_MAGIC or _LegacyTorchUnpickler(f).load() != TORCH_PROTOCOL:
        raise pickle.UnpicklingError("tensor storage bytes are not a torch.save stream")
    _LegacyTorchUnpickler(f).load()  # sys info: storage bytes are little-endian whatever it says
    unpickler = _LegacyTorchUnpickler(f)
    result = unpickler.load()
    for key in _LegacyTorchUnpickler(f).load():
        storage = unpickler.storages.get(key)
        (count,) = struct.unpack("<q", f.read(8).ljust(8, b"\xff"))
        if storage is None or count != storage.numel:
            raise pickle.UnpicklingError(f"tensor storage {key!r} is inconsistent or truncated")
        _charge(
            count * storage.kind.dtype.itemsize * (2 if storage.kind.name == "BFloat16Storage" else 1), "tensor storage"
        )
        raw = f.read(count * storage.kind.dtype.itemsize)
        if len(raw) != count * storage.kind.dtype.itemsize:
            raise pickle.UnpicklingError("tensor storage bytes are truncated")
        array = np.frombuffer(raw, dtype=storage.kind.dtype)
        if storage.kind.name == "BFloat16Storage":  # no numpy bfloat16: top half of a float32
            array = (array.astype(np.uint32) << 16).view(np.float32)
        storage.array = array
    for view, key, offset in unpickler.views:
        root = unpickler.storages[key].array
        if root is None or offset < 0 or offset + view.numel > len(root):
            raise pickle.UnpicklingError("storage view outside its storage")
        view.array = root[offset : offset + view.numel]
    if not isinstance(result, _Storage):
        raise pickle.UnpicklingError("tensor storage bytes hold something other than a storage")
    return result


# ---- numpy ---------------------------------------------------------------------------------------------
# numpy's own dtype.__setstate__ accepts field offsets past the item size (an out-of-bounds read later), so
# the pickle never gets a real dtype or a fresh ndarray to BUILD: it gets these stand-ins, and loads() swaps
# the results in once the whole pickle has been read.


class _DType:
    """What ``numpy.dtype(spec, align, copy)`` gives the pickle; BUILD may set only byte order and size."""

    __slots__ = ("real", "built")

    def __init__(self, spec):
        real = np.dtype(spec) if isinstance(spec, str) and spec[:1] in _DTYPE_KINDS else None
        if real is None or real.kind not in _DTYPE_KINDS:  # "b1,f8" starts well but is structured
            raise _Refused(f"numpy.dtype({spec!r}) (only numeric, bool, string and object dtypes)")
        self.real, self.built = real, False

    def __setstate__(self, state):
        if self.built or not isinstance(state, tuple) or len(state) not in (8, 9) or any(state[2:5]):
            raise pickle.UnpicklingError("numpy dtype state with fields or sub-arrays is not allowed")
        order, size, kind = state[1], state[5], self.real.kind
        if kind in "SU" and type(size) is int and size > 0:
            self.real = np.dtype(f"{kind}{size // (4 if kind == 'U' else 1)}")
        if order in ("<", ">") and self.real.byteorder != "|":
            self.real = self.real.newbyteorder(order)
        self.built = True


_DTYPE_KINDS = set("biufcOSU")  # numeric, bool, object, strings: no void/structured, no datetime


class _ArrayProxy:
    """What numpy's ``_reconstruct`` gives the pickle; BUILD (numpy's array state) makes ``array``."""

    __slots__ = ("array",)

    def __init__(self):
        self.array = None

    def __setstate__(self, state):
        version, shape, dtype, fortran, raw = state if len(state) == 5 else (None, *state)
        if self.array is not None or not isinstance(dtype, _DType) or not isinstance(shape, tuple):
            raise pickle.UnpicklingError("bad numpy array state")
        order = "F" if fortran else "C"
        _charge(len(raw) * (_ITEM_BYTES if dtype.real.hasobject else 1), "a numpy array")
        if dtype.real.hasobject:  # object arrays pickle their items as a list (already unpickled safely)
            flat = np.empty(len(raw), dtype=object)
            flat[:] = raw
            self.array = flat.reshape(shape, order=order)
        else:
            self.array = np.frombuffer(raw, dtype=dtype.real).reshape(shape, order=order).copy()


def _np_reconstruct(subtype, _shape, _typecode):
    if subtype is not _NDARRAY:
        raise _Refused("numpy _reconstruct of a non-ndarray type")
    return _ArrayProxy()


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, _DType):
        raise pickle.UnpicklingError("numpy scalar without a dtype")
    if dtype.real.hasobject:
        return data
    return np.frombuffer(data, dtype=dtype.real, count=1)[0]


def _np_frombuffer(buf, dtype, shape, order="C"):
    if not isinstance(dtype, _DType) or dtype.real.hasobject or not isinstance(buf, (bytes, bytearray)):
        raise pickle.UnpicklingError("bad numpy buffer")
    _charge(len(buf), "a numpy array")
    return np.frombuffer(buf, dtype=dtype.real).reshape(shape, order=order).copy()


def _resolve(root):
    """Swap numpy stand-ins for the arrays/dtypes they built, through containers and Data fields.

    Each shared object is resolved once (memo by id), so the work is linear in the pickle. The value's
    expanded size, shared objects counted wherever they appear, may not pass the record's budget at 8 bytes
    an item: that is what walking it (``numpy.asarray``, printing) would cost. Reference cycles are refused.
    """
    done: dict[int, tuple[Any, int]] = {}  # id -> (resolved object, expanded item count)
    active: set[int] = set()
    keep = []  # keeps originals alive so that ids stay unique while resolving
    budget = getattr(_state, "budget", None)
    max_items = None if budget is None else budget.limit // _ITEM_BYTES

    def walk(obj) -> tuple[Any, int]:
        cls = type(obj)
        if cls in _LEAVES:
            return obj, 1
        if cls is _ArrayProxy:
            return obj.array, 1
        if cls is _DType:
            return obj.real, 1
        if not isinstance(obj, (PygData, PygStorage, dict, list, tuple, set, frozenset)):
            return obj, 1
        key = id(obj)
        if key in done:
            return done[key]
        if key in active:
            raise _OverBudget("the record holds a reference cycle")
        active.add(key)
        keep.append(obj)
        count = 1
        if isinstance(obj, PygData):
            obj.fields, count = walk(obj.fields)
            out = obj
        elif isinstance(obj, PygStorage):
            out, count = obj, walk(obj.mapping)[1]
        elif isinstance(obj, dict):
            pairs = []
            for k, v in obj.items():
                if type(k) not in _LEAVES:
                    count += walk(k)[1]
                v, n = walk(v)
                pairs.append((k, v))
                count += n + 1
            out = type(obj)(pairs)
        elif isinstance(obj, (list, tuple)):
            values = []
            for v in obj:
                v, n = walk(v)
                values.append(v)
                count += n
            out = values if type(obj) is list else type(obj)(values)
        else:  # sets: items are hashable, already final; count them only
            out = obj
            for v in obj:
                count += walk(v)[1]
        active.discard(key)
        done[key] = out, count
        if max_items is not None and count > max_items:
            raise _OverBudget(
                f"its lists/tuples/dicts expand to more than {max_items} items through shared "
                f"references, past its limit of {_limit_text(budget.limit)}"
            )
        return out, count

    return walk(root)[0]


_LEAVES = frozenset((np.ndarray, str, bytes, int, float, bool, type(None)))


# ---- the allow-list ------------------------------------------------------------------------------------


def _codecs_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode with an unexpected encoding")
    _charge(len(text), "bytes")
    return text.encode("latin1")


def _reconstructor(cls, base, state=None):
    if cls not in _HOLDERS or base is not _OBJECT or state is not None:
        raise _Refused("copyreg._reconstructor of a class outside the allow-list")
    return cls.__new__(cls)


def _counted(fn: Callable) -> Callable:
    """``fn`` (set, frozenset, OrderedDict, bytearray) with its argument's items charged to the budget first."""

    def call(*args):
        if args and hasattr(args[0], "__len__"):
            _charge(len(args[0]) * (1 if isinstance(args[0], (bytes, bytearray)) else 4 * _ITEM_BYTES), fn.__name__)
        return fn(*args)

    call.__name__ = fn.__name__
    return call


def _typed(kind, fn: Callable) -> Callable:
    def call(*args):
        if not all(isinstance(a, kind) for a in args):
            raise pickle.UnpicklingError(f"{fn.__name__} given {[type(a).__name__ for a in args]}")
        return fn(*args)

    return call


_TENSOR_REBUILDS = tuple(
    _Allowed(fn, name)
    for fn, name in (
        (_rebuild_tensor, "torch._utils._rebuild_tensor_v2"),
        (_rebuild_tensor, "torch._utils._rebuild_tensor"),
    )
)
_NP = {"_reconstruct": _np_reconstruct, "scalar": _np_scalar}
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _TENSOR_REBUILDS[0],
    ("torch._utils", "_rebuild_tensor"): _TENSOR_REBUILDS[1],
    ("torch._utils", "_rebuild_parameter"): _Allowed(_rebuild_parameter, "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"): _Allowed(_rebuild_parameter, "_rebuild_parameter"),
    ("torch._tensor", "_rebuild_from_type_v2"): _Allowed(_rebuild_from_type_v2, "_rebuild_from_type_v2"),
    ("torch", "Tensor"): _TENSOR,
    ("torch.nn.parameter", "Parameter"): _PARAMETER,
    ("torch.storage", "_load_from_bytes"): _Allowed(_load_legacy_storage, "torch.storage._load_from_bytes"),
    ("collections", "OrderedDict"): _Allowed(_counted(collections.OrderedDict), "collections.OrderedDict"),
    ("_codecs", "encode"): _Allowed(_codecs_encode, "_codecs.encode"),
    ("copyreg", "_reconstructor"): _Allowed(_reconstructor, "copyreg._reconstructor"),
    ("builtins", "object"): _OBJECT,
    ("builtins", "set"): _Allowed(_counted(set), "set"),
    ("builtins", "frozenset"): _Allowed(_counted(frozenset), "frozenset"),
    ("builtins", "bytearray"): _Allowed(_typed((bytes, bytearray), _counted(bytearray)), "bytearray"),
    ("builtins", "complex"): _Allowed(_typed((int, float), complex), "complex"),
    ("builtins", "slice"): _Allowed(_typed((int, type(None)), slice), "slice"),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Allowed(lambda spec, *_: _DType(spec), "numpy.dtype"),
    ("numpy._core.numeric", "_frombuffer"): _Allowed(_np_frombuffer, "numpy _frombuffer"),
    **{("numpy._core.multiarray", k): _Allowed(fn, f"numpy {k}") for k, fn in _NP.items()},
    ("torch_geometric.data.data", "Data"): PygData,
    ("torch_geometric.data.data", "DataEdgeAttr"): _EDGE_ATTR,
    ("torch_geometric.data.data", "DataTensorAttr"): _TENSOR_ATTR,
    ("torch_geometric.data.feature_store", "TensorAttr"): _TENSOR_ATTR,  # FeatureStore's default attr classes
    ("torch_geometric.data.graph_store", "EdgeAttr"): _EDGE_ATTR,
    **{("torch_geometric.data.storage", n): PygStorage for n in ("GlobalStorage", "BaseStorage", "NodeStorage")},
    ("torch_geometric.data.storage", "EdgeStorage"): PygStorage,
}
# older spellings of the same objects (numpy 1.x, Python 2 era pickles, re-exports)
_MODULE_ALIASES = {
    "numpy.core.multiarray": "numpy._core.multiarray",
    "numpy.core.numeric": "numpy._core.numeric",
    "__builtin__": "builtins",
    "copy_reg": "copyreg",
    "torch_geometric.data": "torch_geometric.data.data",
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves globals only from the allow-list above."""

    def find_class(self, module, name):
        found = _ALLOWED.get((_MODULE_ALIASES.get(module, module), name))
        if found is None:
            raise _Refused(f"{module}.{name}")
        return found


def loads(data: bytes, *, path=None, record=None) -> Any:
    """Unpickle one record with the allow-list; Data objects become :class:`PygData`, tensors numpy arrays.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing was called).
        DataError: the bytes are not a readable pickle (truncated, corrupt, inconsistent tensor data), or
            would decode to more than ``RECORD_ALLOWANCE + RECORD_FACTOR * len(data)`` bytes.
    """
    outer = getattr(_state, "budget", None)
    _state.budget = _Budget(RECORD_ALLOWANCE + RECORD_FACTOR * len(data))
    try:
        return _resolve(SafeUnpickler(io.BytesIO(data)).load())
    except _OverBudget as err:
        message = f"record of {len(data)} bytes refused: {err}"
        raise DataError(path, message, record) from None
    except _Refused as err:
        message = f"pickle refers to {err}, which is not allowed; nothing was run"
        raise UnsafePickleError(path, message, record) from None
    except DataError:
        raise
    except Exception as err:  # UnpicklingError, EOFError, ValueError, struct.error ... from corrupt bytes
        text = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(path, f"corrupt record: cannot unpickle ({text})", record=record) from None
    finally:
        _state.budget = outer
