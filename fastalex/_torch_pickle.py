"""Reading PyTorch ``torch.save`` files without torch, and without running their pickles.

``torch.save`` writes one of two containers around a pickle:

* the **zip** format (torch >= 1.6): ``<name>/data.pkl`` holds the pickle, each tensor storage
  is a raw little-endian record ``<name>/data/<key>``, ``<name>/byteorder`` says the byte order;
* the **legacy** format (``_use_new_zipfile_serialization=False``, and every file from before
  1.6, such as torchvision's ``alexnet-owt-7be5be79.pth``): five things back to back, a pickled
  magic number, a pickled protocol version, a pickled dict of system info, the main pickle,
  a pickled list of storage keys, then for each key an int64 element count and the raw bytes.

In both, the main pickle refers to storages by *persistent id*
``("storage", <storage type>, key, location, numel[, view])`` and rebuilds tensors with
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.

A pickle is a program: unpickling an untrusted one with the standard ``pickle.load`` can run
anything (``os.system``...). :class:`SafeUnpickler` resolves only a short whitelist of globals,
each to a harmless stand-in defined here (a tensor becomes a :class:`LazyTensor` that records
where its data is); any other global is refused with :class:`UnsafePickleError` before it can
be called. Nothing of torch is imported.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import pickletools
import struct
import zipfile

import numpy as np

__all__ = ["WeightsFileError", "UnsafePickleError", "LazyTensor", "SafeUnpickler",
           "read_torch_zip", "read_torch_legacy", "LEGACY_MAGIC"]

#: the first pickle of a legacy torch file (``torch.serialization.MAGIC_NUMBER``)
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

#: an expanded (zero-stride) tensor may repeat its storage up to this many elements (256 MiB
#: of float32, more than any AlexNet parameter); beyond that the file is refused rather than
#: trusted to size an allocation
MAX_EXPANDED = 1 << 26
#: the largest pickle (structure only, no tensor data) read from a zip-format file
MAX_PICKLE_BYTES = 64 << 20


# the public exceptions live in fastalex.errors; importable from here as before
from .errors import UnsafePickleError, WeightsFileError  # noqa: E402,F401


# ----------------------------------------------------------------------------- stand-ins

class _Marker:
    """A torch storage type (``torch.FloatStorage``) or dtype (``torch.float32``): a dtype tag only."""

    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state):
        raise UnsafePickleError(f"the pickle tries to set state on {self.name}")

    def __repr__(self):
        return f"<torch.{self.name}>"


class _Callable:
    """A whitelisted global: calls a safe reimplementation; refuses pickle's BUILD on itself."""

    __slots__ = ("name", "fn")

    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def __call__(self, *args):
        return self.fn(*args)

    def __setstate__(self, state):
        raise UnsafePickleError(f"the pickle tries to set state on {self.name}")

    def __repr__(self):
        return f"<safe {self.name}>"


class _OrderedDict(collections.OrderedDict):
    """``collections.OrderedDict`` whose pickled attributes (torch's ``_metadata``) are dropped."""

    def __setstate__(self, state):
        pass


class _StorageRef:
    """A storage named by a persistent id; ``array`` is filled in once its bytes are read."""

    __slots__ = ("key", "dtype_name", "numel", "view", "array", "given")

    def __init__(self, key, dtype_name, numel, view=None):
        self.key, self.dtype_name, self.numel, self.view = key, dtype_name, numel, view
        self.array = None
        self.given = False  # its array was handed out as a tensor's (see LazyTensor.to_numpy)

    def __setstate__(self, state):
        raise UnsafePickleError("the pickle tries to set state on a storage")


class LazyTensor:
    """A tensor as the pickle describes it: a storage plus offset, sizes and strides (in elements)."""

    __slots__ = ("storage", "offset", "size", "stride")

    def __init__(self, storage, offset, size, stride):
        if not isinstance(storage, _StorageRef):
            raise WeightsFileError(f"a tensor is rebuilt from {type(storage).__name__}, not a storage")
        if not isinstance(offset, int) or offset < 0:
            raise WeightsFileError(f"bad storage offset {offset!r}")
        size, stride = tuple(size), tuple(stride)
        if len(size) != len(stride) or not all(isinstance(v, int) and v >= 0 for v in size + stride):
            raise WeightsFileError(f"bad tensor size {size!r} / stride {stride!r}")
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __setstate__(self, state):
        raise UnsafePickleError("the pickle tries to set state on a tensor")

    def __repr__(self):
        return f"LazyTensor({self.storage.dtype_name}, size={self.size})"

    def _whole_storage(self, base, numel) -> bool:
        """Whether this tensor is all of its storage, in order, as native float32."""
        expect = 1
        for n, s in zip(reversed(self.size), reversed(self.stride)):
            if n > 1 and s != expect:
                return False
            expect *= n
        return (type(self.storage) is _StorageRef and self.offset == 0 and numel == base.size > 0
                and base.dtype == np.dtype(np.float32))

    def to_numpy(self) -> np.ndarray:
        """A C-contiguous array of its own; floating types become float32, integer and bool
        types are kept. A float32 tensor that is all of its storage (a saved model's weights)
        gets the storage's array itself, the first time: no second copy of the weights."""
        base = self.storage.array
        if base is None:
            raise WeightsFileError(f"the data of storage {self.storage.key!r} was never read")
        numel = math.prod(self.size)
        if not self.storage.given and self._whole_storage(base, numel):
            self.storage.given = True  # a second tensor over the same storage gets a copy
            return base.reshape(self.size)
        if numel:
            last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
            if last >= base.size:
                raise WeightsFileError(
                    f"a tensor of size {self.size}, stride {self.stride} at offset {self.offset} "
                    f"reaches past the end of its storage {self.storage.key!r} ({base.size} elements)")
            if numel > base.size and numel > MAX_EXPANDED:
                # a zero-stride (expanded) view: a few bytes in the file can ask for gigabytes
                raise WeightsFileError(
                    f"a tensor of size {self.size}, stride {self.stride} repeats the {base.size} "
                    f"elements of storage {self.storage.key!r} into {numel:,} elements (an expanded "
                    f"tensor); more than {MAX_EXPANDED:,} is refused")
            view = np.lib.stride_tricks.as_strided(
                base[self.offset:], shape=self.size,
                strides=tuple(s * base.itemsize for s in self.stride), writeable=False)
        else:
            view = np.empty(self.size, dtype=base.dtype)
        arr = np.array(view, order="C")  # copy: detaches from the storage and fixes strides
        if self.storage.dtype_name == "bfloat16":  # the upper half of a float32
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        elif arr.dtype.kind == "f":
            arr = arr.astype(np.float32, copy=False)
        return arr.astype(arr.dtype.newbyteorder("="), order="C", copy=False)


def _rebuild_tensor(storage, offset, size, stride, *_ignored):
    """``torch._utils._rebuild_tensor`` / ``_rebuild_tensor_v2`` (requires_grad, hooks, metadata ignored)."""
    return LazyTensor(storage, offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    """``torch._utils._rebuild_parameter[_with_state]``: an ``nn.Parameter`` is its data."""
    if not isinstance(data, LazyTensor):
        raise WeightsFileError(f"a parameter is rebuilt from {type(data).__name__}, not a tensor")
    return data


def _size(*args):
    """``torch.Size(iterable)``."""
    if len(args) != 1:
        raise WeightsFileError("torch.Size takes one argument")
    return tuple(args[0])


# storage type / dtype name -> (numpy dtype of the raw elements, our dtype name)
_STORAGES = {
    "FloatStorage": ("<f4", "float32"), "DoubleStorage": ("<f8", "float64"),
    "HalfStorage": ("<f2", "float16"), "BFloat16Storage": ("<u2", "bfloat16"),
    "LongStorage": ("<i8", "int64"), "IntStorage": ("<i4", "int32"), "ShortStorage": ("<i2", "int16"),
    "CharStorage": ("i1", "int8"), "ByteStorage": ("u1", "uint8"), "BoolStorage": ("?", "bool"),
}
_DTYPES = {name: _STORAGES[storage] for name, storage in {
    "float32": "FloatStorage", "float": "FloatStorage", "float64": "DoubleStorage",
    "double": "DoubleStorage", "float16": "HalfStorage", "half": "HalfStorage",
    "bfloat16": "BFloat16Storage", "int64": "LongStorage", "long": "LongStorage",
    "int32": "IntStorage", "int": "IntStorage", "int16": "ShortStorage", "short": "ShortStorage",
    "int8": "CharStorage", "uint8": "ByteStorage", "bool": "BoolStorage"}.items()}

_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _Callable("torch._utils._rebuild_tensor_v2", _rebuild_tensor),
    ("torch._utils", "_rebuild_tensor"): _Callable("torch._utils._rebuild_tensor", _rebuild_tensor),
    ("torch._utils", "_rebuild_parameter"): _Callable("torch._utils._rebuild_parameter", _rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"):
        _Callable("torch._utils._rebuild_parameter_with_state", _rebuild_parameter),
    ("torch", "Size"): _Callable("torch.Size", _size),
    ("collections", "OrderedDict"): _OrderedDict,
}
_SAFE_GLOBALS.update({("torch", name): _Marker(name, spec) for name, spec in _STORAGES.items()})
_SAFE_GLOBALS.update({("torch", name): _Marker(name, spec) for name, spec in _DTYPES.items()})


class SafeUnpickler(pickle.Unpickler):
    """Unpickles torch's tensor pickles only: a whitelist of globals, each a safe stand-in.

    ``storages`` collects every storage the pickle names (key -> :class:`_StorageRef`);
    the caller reads their bytes afterwards. With ``allow_storages=False`` (the small header
    pickles of the legacy format) a persistent id is an error too.
    """

    def __init__(self, file, source="file", allow_storages=True):
        super().__init__(file)
        self.source = source
        self.allow_storages = allow_storages
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module, name):
        safe = _SAFE_GLOBALS.get((module, name))
        if safe is None:
            raise UnsafePickleError(
                f"refusing to load {self.source}: the file asks for {module}.{name!s}, which is not "
                f"a tensor or plain container (only PyTorch state dicts and .npz files can be loaded)")
        return safe

    def persistent_load(self, pid):
        if not self.allow_storages:
            raise WeightsFileError(f"{self.source}: unexpected storage reference in a header")
        if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
            raise WeightsFileError(f"{self.source}: unsupported persistent id {pid!r:.80}")
        _, kind, key, _location, numel = pid[:5]
        view = pid[5] if len(pid) == 6 else None
        if not isinstance(kind, _Marker):
            raise WeightsFileError(f"{self.source}: unsupported storage type {kind!r:.80}")
        if not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise WeightsFileError(f"{self.source}: bad storage reference {pid!r:.120}")
        ref = self.storages.get(key)
        if ref is None:
            ref = self.storages[key] = _StorageRef(key, kind.dtype[1], numel)
        if view is not None:  # very old files: (view key, offset, size) into the root storage
            view_key, view_offset, view_size = view
            return _StorageView(ref, view_key, view_offset, view_size)
        return ref


class _StorageView(_StorageRef):
    """A slice of another storage (legacy files from torch < 1.0 sharing storages)."""

    __slots__ = ("root", "start")

    def __init__(self, root, key, start, size):
        super().__init__(key, root.dtype_name, size)
        self.root, self.start = root, start

    @property
    def array(self):
        root = self.root.array
        return None if root is None else root[self.start:self.start + self.numel]

    @array.setter
    def array(self, value):
        pass


# ----------------------------------------------------------------------------- containers

def _storage_dtype(ref, big_endian=False):
    kind = {v[1]: v[0] for v in _STORAGES.values()}[ref.dtype_name]
    dtype = np.dtype(kind)
    return dtype.newbyteorder(">") if big_endian and dtype.itemsize > 1 else dtype


class _Clamped:
    """A file whose reads never ask for more than what is left of its ``size`` bytes: Python's
    buffered ``read(n)`` allocates ``n`` bytes up front, and ``n`` may come from the file."""

    def __init__(self, f, size):
        self.f, self.size = f, size

    def _left(self, n):
        left = max(0, self.size - self.f.tell())
        return left if n is None or n < 0 else min(n, left)

    def read(self, n=-1):
        return self.f.read(self._left(n))

    def readline(self, n=-1):
        return self.f.readline(self._left(n))

    def readinto(self, buffer):
        view = memoryview(buffer)
        return self.f.readinto(view[:self._left(len(view))])

    def seek(self, offset, whence=io.SEEK_SET):
        return self.f.seek(offset, whence)

    def tell(self):
        return self.f.tell()


def _prescan(f):
    """Walk the next pickle's opcodes without building anything, then rewind: a counted
    bytes/string opcode that claims more data than the file holds fails here, before
    ``pickle`` allocates what it claims (``f`` must be seekable and bounded, e.g. :class:`_Clamped`)."""
    start = f.tell()
    try:
        for _ in pickletools.genops(f):
            pass
    except Exception as exc:
        raise WeightsFileError(f"the pickle inside is corrupt or truncated ({type(exc).__name__}: {exc})") from None
    f.seek(start)


def _unpickle(data_or_file, source, unpickler_cls=SafeUnpickler):
    if not isinstance(data_or_file, _Clamped):
        size = data_or_file.seek(0, io.SEEK_END)
        data_or_file.seek(0)
        data_or_file = _Clamped(data_or_file, size)
    _prescan(data_or_file)
    unpickler = unpickler_cls(data_or_file, source)
    try:
        obj = unpickler.load()
    except WeightsFileError:
        raise
    except Exception as exc:  # pickle.UnpicklingError, EOFError, TypeError from bad REDUCEs ...
        raise WeightsFileError(f"{source}: the pickle inside is corrupt or truncated "
                               f"({type(exc).__name__}: {exc})") from None
    return obj, unpickler.storages


def _root(ref):
    return ref.root if isinstance(ref, _StorageView) else ref


def _needed(tensors):
    return {_root(t.storage).key for t in tensors.values()}


def read_torch_zip(archive: zipfile.ZipFile, source: str, select):
    """The tensors of a zip-format torch file as numpy arrays.

    ``select(obj)`` picks from the unpickled object the ``{name: LazyTensor}`` to return; only
    their storages are read.
    """
    names = archive.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        raise WeightsFileError(f"{source}: a zip archive without exactly one <name>/data.pkl "
                               "is not a PyTorch file")
    prefix = pkl[0][: -len("data.pkl")]
    big_endian = False
    if prefix + "byteorder" in names:
        order = archive.read(prefix + "byteorder").strip()
        if order not in (b"little", b"big"):
            raise WeightsFileError(f"{source}: unknown byte order {order!r}")
        big_endian = order == b"big"
    info = archive.getinfo(pkl[0])
    check_member(info, source, MAX_PICKLE_BYTES)
    with archive.open(info) as member:
        data = member.read(MAX_PICKLE_BYTES + 1)
    obj, storages = _unpickle(io.BytesIO(data), source)
    tensors = select(obj)
    for key in _needed(tensors):
        try:
            info = archive.getinfo(f"{prefix}data/{key}")
        except KeyError:
            raise WeightsFileError(f"{source}: storage {key!r} is missing from the archive") from None
        check_member(info, source)
        ref = storages[key]
        nbytes = ref.numel * _storage_dtype(ref).itemsize
        if nbytes != info.file_size:  # checked before allocating or inflating anything
            raise WeightsFileError(f"{source}: storage {key!r} holds {info.file_size:,} bytes, but "
                                   f"its tensors declare {ref.numel:,} elements ({nbytes:,} bytes)"
                                   + (" (truncated file?)" if nbytes > info.file_size else ""))
        with archive.open(info) as member:
            _fill(ref, member, big_endian, source)
    return {name: t.to_numpy() for name, t in tensors.items()}


#: deflate cannot expand data more than about 1032 times; a member claiming more is a lie
_MAX_DEFLATE_RATIO = 1100


def check_member(info: zipfile.ZipInfo, source: str, max_size=None):
    """Refuse a zip member that is encrypted, uses a compression other than stored/deflate, or
    declares more uncompressed bytes than its compressed size (or ``max_size``) allows."""
    if info.flag_bits & 0x1:
        raise WeightsFileError(f"{source}: zip member {info.filename!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise WeightsFileError(f"{source}: zip member {info.filename!r} uses compression method "
                               f"{info.compress_type}; only stored and deflate are supported")
    limit = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED else _MAX_DEFLATE_RATIO)
    if info.file_size > limit + 1024:
        raise WeightsFileError(f"{source}: zip member {info.filename!r} claims {info.file_size:,} bytes "
                               f"from {info.compress_size:,} compressed bytes (corrupt, or a zip bomb)")
    if max_size is not None and info.file_size > max_size:
        raise WeightsFileError(f"{source}: zip member {info.filename!r} is {info.file_size:,} bytes, "
                               f"more than the {max_size:,} allowed")


_READ_CHUNK = 1 << 20


def read_exactly(f, dtype, count, what, source):
    """``count`` elements of ``dtype`` read from ``f`` into a new array (the caller has checked
    that the file can hold them); a short read is a truncated file."""
    arr = np.empty(count, dtype=dtype)
    view, done = memoryview(arr).cast("B"), 0
    while done < len(view):
        n = f.readinto(view[done:done + _READ_CHUNK])  # small pieces: no second big buffer
        if not n:
            raise WeightsFileError(f"{source}: {what} holds {done} bytes, expected {len(view)} "
                                   "(truncated file?)")
        done += n
    return arr


def _fill(ref, f, big_endian, source):
    ref.array = read_exactly(f, _storage_dtype(ref, big_endian), ref.numel, f"storage {ref.key!r}", source)


def read_torch_legacy(f, source: str, select, size=None):
    """The tensors of a legacy torch file open at its start (``select`` as in :func:`read_torch_zip`).

    Storages are stored one after the other; the ones ``select`` did not pick are skipped.
    ``size``: the file's size in bytes (default: found by seeking); nothing larger is allocated.
    """
    if size is None:
        size = f.seek(0, io.SEEK_END)
        f.seek(0)
    f = _Clamped(f, size)
    header = []
    for what in ("magic number", "protocol version", "system info"):
        try:
            _prescan(f)
            header.append(SafeUnpickler(f, source, allow_storages=False).load())
        except WeightsFileError:
            raise
        except Exception as exc:
            raise WeightsFileError(f"{source}: not a PyTorch file (cannot read its {what}: "
                                   f"{type(exc).__name__})") from None
        if what == "magic number" and header[0] != LEGACY_MAGIC:
            raise WeightsFileError(f"{source}: a pickle, but not a PyTorch file (no torch magic "
                                   "number); only PyTorch state dicts and .npz files can be loaded")
        if what == "protocol version" and header[1] != LEGACY_PROTOCOL:
            raise WeightsFileError(f"{source}: unsupported PyTorch legacy protocol {header[1]!r}")
    info = header[2] if isinstance(header[2], dict) else {}
    big_endian = not info.get("little_endian", True)

    obj, storages = _unpickle(f, source)
    try:
        _prescan(f)
        keys = SafeUnpickler(f, source, allow_storages=False).load()
    except WeightsFileError:
        raise
    except Exception as exc:
        raise WeightsFileError(f"{source}: truncated PyTorch file (cannot read the list of "
                               f"storages: {type(exc).__name__})") from None
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise WeightsFileError(f"{source}: the list of storages does not match the tensors")
    tensors = select(obj)
    needed = _needed(tensors)
    for key in keys:
        ref = storages[key]
        dtype = _storage_dtype(ref, big_endian)
        head = f.read(8)
        if len(head) != 8:
            raise WeightsFileError(f"{source}: truncated PyTorch file (storage {key!r} is missing)")
        (count,) = struct.unpack(">q" if big_endian else "<q", head)
        if count != ref.numel:
            raise WeightsFileError(f"{source}: storage {key!r} says {count} elements, "
                                   f"the tensors expect {ref.numel}")
        nbytes = count * dtype.itemsize
        if nbytes > size - f.tell():  # checked before allocating: never trust the count alone
            raise WeightsFileError(f"{source}: storage {key!r} says {count:,} elements ({nbytes:,} "
                                   f"bytes) but only {size - f.tell():,} bytes are left (truncated file?)")
        if key in needed:
            _fill(ref, f, big_endian, source)
        else:
            f.seek(nbytes, io.SEEK_CUR)
    return {name: t.to_numpy() for name, t in tensors.items()}
