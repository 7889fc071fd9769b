"""A restricted unpickler for checkpoints from anywhere: no code runs, no size is taken on trust.

Two passes over every pickle:

1. `check_pickle` walks the opcodes (a tight loop over the bytes, no recursion, no
   allocation beyond the bytes present) and refuses, with the byte offset, anything the C
   unpickler would turn into a crash or an allocation the file does not pay for: lengths past
   the end of the data, memo indices out of proportion (the C memo grows to the index), huge
   integers, and nesting deeper than `MAX_DEPTH` (hashing a 200k-deep tuple recurses in C and
   overflows the stack). Depth is tracked per object as the opcodes build it.
2. `RestrictedUnpickler` (the C unpickler) then builds the objects. `find_class` gives only
   inert values: small local functions for the few safe globals, each charging what it
   builds to a budget proportional to the pickle's size (so `list(x)` repeated through the
   memo cannot multiply memory); dangerous modules are refused by name; every other class
   becomes a `StandIn` that keeps its state and calls nothing.

Objects built this way may still share references (a "billion laughs" graph is small in
memory); code that walks them counts its visits with a `Budget`.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import io
import pickle
import pickletools
import struct
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from ..core.lazy import numpy as np

from ..errors import CheckpointError
from .reading import clip, shown

MAX_DEPTH = 256  # nesting of containers in a pickle, and of anything walked recursively
MAX_INT_BYTES = 256  # binary integers (LONG1/LONG4) wider than this are refused
MAX_PICKLE = 256 << 20  # bytes of one pickle (the tensors' data is outside it)
MAX_NODES = 2_000_000  # objects visited when walking what a pickle built
# Picklers number memo entries 0, 1, 2...; an index may run this far ahead of the opcodes
# seen (the C unpickler allocates its memo up to twice the highest index).
MEMO_SLACK = 1 << 16

# Modules that can run anything: refused outright, by name, with a message that says so.
BLOCKED_MODULES = {
    "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pickle",
    "marshal", "ctypes", "code", "codeop", "pty", "commands", "webbrowser", "multiprocessing",
    "threading", "signal", "io", "pathlib", "tempfile", "glob", "platform", "types", "inspect",
    "operator", "functools", "itertools", "asyncio", "builtins", "__builtin__", "torch.hub",
    "torch.serialization", "torch.jit", "numpy.testing", "pydoc", "timeit", "cProfile", "profile",
    "pdb", "bdb", "trace", "gc", "ast", "dis", "zipimport", "pkgutil", "site", "sysconfig", "copyreg",
    "_pickle", "nturl2path", "urllib", "http", "ftplib", "smtplib", "xmlrpc", "logging", "shelve", "dbm",
    "sqlite3", "ensurepip", "venv", "distutils", "setuptools", "pip", "idlelib", "tkinter", "_posixsubprocess",
    "numpy.f2py", "numpy.distutils", "numpy.ctypeslib", "numpy.lib.npyio", "numpy.load", "torch._dynamo",
    "torch._inductor", "torch.utils.cpp_extension", "torch.ops", "torch._ops", "torch.library", "torch.fx",
    "torch.package", "torch.distributed", "torch.multiprocessing", "torch.cuda", "torch.backends", "dill",
    "cloudpickle", "joblib", "yaml", "numexpr", "pandas.io", "scipy.io", "_io", "_thread", "_signal", "_socket",
    "_ctypes", "_imp", "_frozen_importlib", "_frozen_importlib_external", "codecs", "mmap", "resource", "fcntl",
    "atexit",
}
BLOCKED_NAMES = {"eval", "exec", "system", "__import__", "compile", "open", "getattr", "setattr", "delattr",
                 "globals", "locals", "vars", "input", "breakpoint", "execfile", "popen", "check_call",
                 "check_output", "Popen"}

# Per opcode byte: how its argument is laid out and what it does to the stack, derived once
# from pickletools' descriptions so that the check below is a tight loop over the bytes.
_ARG_NONE, _ARG_FIXED, _ARG_LINE, _ARG_TWO_LINES, _ARG_COUNTED = range(5)
(_ATOM, _BUILDER, _CALL, _MUTATOR, _PUT, _GET, _MEMOIZE, _DUP, _MARKOP, _STOP, _POP, _POP_MARK,
 _NUMBER) = range(13)
_CATEGORY = {"TUPLE": _BUILDER, "TUPLE1": _BUILDER, "TUPLE2": _BUILDER, "TUPLE3": _BUILDER, "LIST": _BUILDER,
             "DICT": _BUILDER, "FROZENSET": _BUILDER, "EMPTY_LIST": _BUILDER, "EMPTY_DICT": _BUILDER,
             "EMPTY_TUPLE": _BUILDER, "EMPTY_SET": _BUILDER, "OBJ": _BUILDER, "INST": _BUILDER,
             "REDUCE": _CALL, "NEWOBJ": _CALL, "NEWOBJ_EX": _CALL,
             "APPEND": _MUTATOR, "APPENDS": _MUTATOR, "SETITEM": _MUTATOR, "SETITEMS": _MUTATOR,
             "ADDITEMS": _MUTATOR, "BUILD": _MUTATOR,
             "PUT": _PUT, "BINPUT": _PUT, "LONG_BINPUT": _PUT, "GET": _GET, "BINGET": _GET, "LONG_BINGET": _GET,
             "MEMOIZE": _MEMOIZE, "DUP": _DUP, "MARK": _MARKOP, "STOP": _STOP, "POP": _POP, "POP_MARK": _POP_MARK,
             **dict.fromkeys(("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT",
                              "NONE", "NEWTRUE", "NEWFALSE"), _NUMBER)}
_TUPLES = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "EMPTY_TUPLE"}
# Numbers and tuples of numbers hash the same in every process, so a file can pick many
# distinct ones with one hash and make a dict of them quadratic to build: refused past this.
MAX_COLLISIONS = 64
_OPS: list[tuple | None] = [None] * 256  # (name, arg kind, arg size, category, pops, pops to mark, pushes)
for _op in pickletools.opcodes:
    _n = _op.arg.n if _op.arg is not None else 0
    if _op.arg is None:
        _kind, _size = _ARG_NONE, 0
    elif _n > 0:
        _kind, _size = _ARG_FIXED, _n
    elif _n == pickletools.UP_TO_NEWLINE:
        _kind, _size = (_ARG_TWO_LINES if _op.name in ("GLOBAL", "INST") else _ARG_LINE), 0
    else:  # a length prefix of 1, 4 (signed or not) or 8 bytes, then that many bytes
        _kind = _ARG_COUNTED
        _size = {pickletools.TAKEN_FROM_ARGUMENT1: 1, pickletools.TAKEN_FROM_ARGUMENT4: -4,
                 pickletools.TAKEN_FROM_ARGUMENT4U: 4, pickletools.TAKEN_FROM_ARGUMENT8U: 8}[_n]
    _marked = pickletools.markobject in _op.stack_before
    _pre = _op.stack_before.index(pickletools.markobject) if _marked else len(_op.stack_before)
    _OPS[ord(_op.code.encode("latin1"))] = (_op.name, _kind, _size, _CATEGORY.get(_op.name, _ATOM), _pre, _marked,
                                             len(_op.stack_after))
del _op, _n, _kind, _size, _marked, _pre


class PickleTruncated(Exception):
    """The pickle runs past the bytes given (the caller may have more to give)."""


def check_pickle(data: bytes, path: Path, start: int = 0, base: int = 0) -> int:
    """Walk one pickle's opcodes in `data` from `start` and refuse what is unsafe to build;
    returns the index just after its STOP. Messages give offsets as `base` + index.
    Raises `PickleTruncated` if `data` ends before the STOP."""
    depth: list[int] = [0]  # per object built so far; object 0 stands for every atom
    size: list[int] = [1]  # objects in each one's tree, shared references counted each time
    stack: list[int] = []
    marks: list[int] = []
    memo: dict[int, int] = {}
    end = len(data)
    pos = start
    ops = 0
    find = data.find
    at = start

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: malformed or unsafe pickle at byte {base + at}: {why}")

    def grown(value: int) -> int:
        # Hashing, comparing or printing a tuple walks its whole tree, shared parts again
        # each time: a few bytes of memo references can make it astronomically large.
        if value > MAX_NODES:
            raise CheckpointError(f"{path}: the pickle builds an object of more than {MAX_NODES:,} parts through "
                                  f"shared references (byte {base + at}); refusing")
        return value

    values: dict[int, object] = {}  # node -> value, for numbers and tuples of them
    hashes: dict[int, object] = {}  # hash -> the one value seen with it, or a set of them

    def collide(value) -> None:
        h = hash(value)
        seen = hashes.get(h, _BAD)
        if seen is _BAD:
            hashes[h] = value
        elif isinstance(seen, set):
            seen.add(value)
            if len(seen) > MAX_COLLISIONS:
                raise CheckpointError(f"{path}: the pickle holds more than {MAX_COLLISIONS} different values with "
                                      f"the same hash (byte {base + at}), crafted to make building it quadratic")
        elif seen != value:
            hashes[h] = {seen, value}

    def deep(value: int) -> int:
        if value > MAX_DEPTH:
            raise CheckpointError(f"{path}: the pickle nests deeper than {MAX_DEPTH} levels (byte {base + at})")
        return value

    while True:
        at = pos
        if pos >= end:
            raise PickleTruncated()
        spec = _OPS[data[pos]]
        if spec is None:
            raise bad(f"unknown opcode {data[pos]:#04x}")
        name, kind, n, category, pre, marked, pushes = spec
        pos += 1
        ops += 1
        arg = b""
        index = -1
        arg_at = pos
        if kind == _ARG_FIXED:
            if pos + n > end:
                raise PickleTruncated()
            if category == _PUT or category == _GET:
                index = data[pos] if n == 1 else int.from_bytes(data[pos:pos + n], "little")
            elif name == "PROTO":
                arg = data[pos:pos + 1]
            pos += n
        elif kind == _ARG_LINE or kind == _ARG_TWO_LINES:
            stop = find(b"\n", pos)
            if kind == _ARG_TWO_LINES and stop >= 0:
                stop = find(b"\n", stop + 1)
            if stop < 0:
                raise PickleTruncated()
            if name in ("INT", "LONG", "PUT", "GET") and stop - pos > 4300:
                raise bad(f"a number of {stop - pos} digits")
            if category == _PUT or category == _GET:
                text = data[pos:stop]
                index = int(text) if text.isdigit() else -1
            elif category == _NUMBER:
                arg = data[pos:stop]
            pos = stop + 1
        elif kind == _ARG_COUNTED:
            width = abs(n)
            if pos + width > end:
                raise PickleTruncated()
            length = int.from_bytes(data[pos:pos + width], "little", signed=n < 0)
            if length < 0:
                raise bad(f"negative length {length}")
            pos += width
            if name in ("LONG1", "LONG4") and length > MAX_INT_BYTES:
                raise bad(f"an integer of {length} bytes")
            if length > MAX_PICKLE:
                raise bad(f"a length of {length} bytes, more than a pickle can hold")
            if pos + length > end:
                raise PickleTruncated()
            pos += length
        if category == _NUMBER:
            value = _number(name, data, arg_at, pos, arg)
            if value is _BAD:
                raise bad(f"{name} with an argument that is not a number")
            values[len(depth)] = value
            collide(value)
            depth.append(0)
            size.append(1)
            stack.append(len(depth) - 1)
            continue
        if category == _ATOM:
            if pre:
                if len(stack) < pre:
                    raise bad(f"{name} on a stack of {len(stack)} items")
                del stack[len(stack) - pre:]
            if pushes:
                stack.append(0)
            if name == "PROTO" and arg[0] > pickle.HIGHEST_PROTOCOL:
                raise bad(f"unsupported pickle protocol {arg[0]}")
            continue
        if category == _PUT or category == _MEMOIZE:
            if not stack:
                raise bad("memo store from an empty stack")
            if category == _MEMOIZE:
                index = len(memo)
            if index < 0 or index > ops + MEMO_SLACK:
                raise bad(f"memo index {index} (the C unpickler would size its memo to it)")
            memo[index] = stack[-1]
            continue
        if category == _GET:
            node = memo.get(index)
            if node is None:
                raise bad(f"memo index {index} was never stored")
            stack.append(node)
            continue
        if category == _DUP:
            if not stack:
                raise bad("DUP on an empty stack")
            stack.append(stack[-1])
            continue
        if category == _MARKOP:
            marks.append(len(stack))
            continue
        if category == _STOP:
            if len(stack) != 1 or marks:
                raise bad(f"STOP with {len(stack)} objects on the stack")
            return pos
        if marked:
            if not marks:
                raise bad(f"{name} without a MARK")
            m = marks.pop()
            if m < pre:
                raise bad(f"{name} on an empty stack")
            popped = stack[m - pre:]
            del stack[m - pre:]
        else:
            if len(stack) < pre:
                raise bad(f"{name} on a stack of {len(stack)} items")
            popped = stack[len(stack) - pre:] if pre else []
            if pre:
                del stack[len(stack) - pre:]
        if category == _MUTATOR:
            if not popped:
                raise bad(f"{name} without a container")
            container = popped[0]
            if container == 0:  # an atom used as a container: give it a node of its own
                depth.append(0)
                size.append(1)
                container = len(depth) - 1
            if len(popped) > 1:
                children = popped[1:]
                size[container] = grown(size[container] + sum(size[i] for i in children))
                depth[container] = deep(max(depth[container], 1 + max(depth[i] for i in children)))
            stack.append(container)
        elif category == _BUILDER or category == _CALL:
            d, total = 0, 1
            for i in popped:
                if depth[i] > d:
                    d = depth[i]
                total += size[i]
            if name in _TUPLES and all(i in values for i in popped):
                value = tuple(values[i] for i in popped)
                values[len(depth)] = value
                collide(value)
            depth.append(deep(d + 1 if category == _BUILDER else d))
            size.append(grown(total))
            stack.append(len(depth) - 1)
        elif pushes:  # POP/POP_MARK push nothing; anything else pushes an atom
            stack.append(0)


_BAD = object()


def _number(name: str, data: bytes, start: int, end: int, text: bytes):
    """The value of a number opcode whose argument is data[start:end] (or `text`)."""
    try:
        if name in ("BININT", "BININT1", "BININT2"):
            return int.from_bytes(data[start:end], "little", signed=name == "BININT")
        if name in ("LONG1", "LONG4"):
            width = 1 if name == "LONG1" else 4
            return int.from_bytes(data[start + width:end], "little", signed=True)
        if name == "BINFLOAT":
            return struct.unpack(">d", data[start:end])[0]
        if name == "INT":
            return {b"00": False, b"01": True}.get(text) if text in (b"00", b"01") else int(text)
        if name == "LONG":
            return int(text[:-1] if text.endswith(b"L") else text)
        if name == "FLOAT":
            return float(text)
        return {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name]
    except (ValueError, struct.error):
        return _BAD


class Budget:
    """How many more objects may be built or visited; shared references cannot multiply work."""

    def __init__(self, limit: int, what: str):
        self.left = limit
        self.limit = limit
        self.what = what

    def spend(self, n: int = 1) -> None:
        self.left -= n
        if self.left < 0:
            raise CheckpointError(f"{self.what}: more than {self.limit:,} objects (shared references "
                                  "multiply a small file into a huge structure); refusing")


class StandIn:
    """An instance of a class the file names but mapspec does not trust: state kept, nothing run."""

    _module = "?"
    _name = "?"

    def __new__(cls, *args, **kwargs):  # REDUCE and NEWOBJ both land here; __init__ adds nothing
        if any(getattr(a, "tensor_data", False) for a in args):
            # An unknown callable building something from a storage is almost surely a tensor
            # rebuild mapspec does not know: left as a stand-in, that tensor would silently
            # be missing from the conversion.
            raise CheckpointError(f"{shown(cls.qualname())}(...) builds something from tensor storage; "
                                  "mapspec does not know it, so it cannot tell which tensor it makes "
                                  "(not supported; not a safety issue)")
        obj = object.__new__(cls)
        obj.__dict__.update(_args=args, _items={}, _list=[], _state=None)
        return obj

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and (state[0] is None or isinstance(state[0], dict)):
            state, slots = state
            if isinstance(slots, dict):
                self.__dict__.update(slots)
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_state"] = state

    def __setitem__(self, key, value):
        self.__dict__["_items"][key] = value

    def append(self, value):
        self.__dict__["_list"].append(value)

    def extend(self, values):
        self.__dict__["_list"].extend(values)

    def __reduce__(self):  # never re-pickled with real classes
        raise TypeError("stand-ins cannot be pickled")

    @classmethod
    def qualname(cls) -> str:
        return f"{cls._module}.{cls._name}"

    def __repr__(self) -> str:
        return f"<{self.qualname()}>"


_STANDINS: dict[tuple[str, str], type] = {}


def standin(module: str, name: str) -> type:
    key = (module, name)
    if key not in _STANDINS:
        _STANDINS[key] = type(name.rsplit(".", 1)[-1][:100] or "_", (StandIn,), {"_module": module, "_name": name})
    return _STANDINS[key]


class Inert:
    """Base of the values the unpickler hands out: BUILD cannot change them afterwards."""

    __slots__ = ()
    tensor_data = False  # True for storages: what an unknown callable may not be given

    def __setstate__(self, state):
        raise CheckpointError(f"the pickle tries to change a {type(self).__name__}")

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} cannot be pickled")


class Device(Inert):
    __slots__ = ("args",)

    def __init__(self, *args):
        self.args = args

    def __repr__(self) -> str:
        return "device(...)"


_SIZED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
_SCALARS = (int, float, complex, bool, str, bytes, type(None))


class RestrictedUnpickler(pickle.Unpickler):
    """The C unpickler with `find_class` answering from `globals_for` and the safe builtins.

    `extra(module, name)` returns a value for format-specific globals (torch's rebuild
    functions, say) or None; `persistent(pid)` resolves persistent ids."""

    def __init__(self, data: bytes, path: Path, extra: Callable[[str, str], Any] | None = None,
                 persistent: Callable[[Any], Any] | None = None):
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.path = path
        self.budget = Budget(len(data) + 4096, f"{path}: the pickle builds")
        self._extra = extra
        self._persistent = persistent

    def persistent_load(self, pid):
        if self._persistent is None:
            raise CheckpointError(f"{self.path}: a persistent reference {shown(pid)} where none belongs")
        return self._persistent(pid)

    def refuse(self, module: str, name: str) -> CheckpointError:
        return CheckpointError(f"{self.path}: refusing to unpickle: the file calls {clip(f'{module}.{name}', 120)}, "
                               "which could run arbitrary code")

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if self._extra is not None:
            value = self._extra(module, name)
            if value is not None:
                return value
        safe = self._safe_global(module, name)
        if safe is not None:
            return safe
        root = module.split(".")[0]
        parts = module.split(".")
        if (root in BLOCKED_MODULES or any(".".join(parts[:i]) in BLOCKED_MODULES for i in range(1, len(parts) + 1))
                or name.split(".")[-1] in BLOCKED_NAMES or name.startswith("__")):
            raise self.refuse(module, name)
        return standin(module, name)

    # The only callables a pickle gets. Each takes plain, already-built values and charges
    # the size of what it builds, so none can make data the file does not pay for.
    def _sized(self, ctor: type) -> Callable:
        def build(*args):
            if len(args) > 1 or (args and not isinstance(args[0], _SIZED)):
                raise CheckpointError(f"{self.path}: {ctor.__name__}() called with "
                                      f"{type(args[0]).__name__ if args else 'several'} arguments in the pickle")
            if args:
                self.budget.spend(len(args[0]))
            return ctor(*args)
        build.__name__ = ctor.__name__
        return build

    def _scalar(self, ctor: type) -> Callable:
        def build(*args):
            if len(args) > 3 or not all(isinstance(a, _SCALARS) for a in args):
                raise CheckpointError(f"{self.path}: {ctor.__name__}() called with unexpected arguments in the pickle")
            if ctor is bytes and args and isinstance(args[0], int):
                raise CheckpointError(f"{self.path}: bytes(n) in the pickle would allocate n bytes; refusing")
            if ctor is str and args and not isinstance(args[0], (str, bytes, int, float)):
                raise CheckpointError(f"{self.path}: str() of a {type(args[0]).__name__} in the pickle")
            return ctor(*args)
        build.__name__ = ctor.__name__
        return build

    def _ordered_dict(self, *args):
        if len(args) > 1 or (args and not isinstance(args[0], (list, tuple, dict))):
            raise CheckpointError(f"{self.path}: OrderedDict() called with unexpected arguments in the pickle")
        if args:
            self.budget.spend(len(args[0]))
        return OrderedDict(*args)

    def _reconstructor(self, cls, base, state=None):
        if isinstance(cls, type) and issubclass(cls, StandIn):
            return cls.__new__(cls)
        if base is object and cls in (OrderedDict, dict, list, set):
            return cls()
        raise CheckpointError(f"{self.path}: copyreg._reconstructor of {shown(getattr(cls, '__name__', '?'))}")

    def _codecs_encode(self, text, encoding="utf-8", errors="strict"):
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8"):
            raise CheckpointError(f"{self.path}: _codecs.encode with unexpected arguments in the pickle")
        return text.encode(encoding)

    def _numpy_dtype(self, name, align=False, copy=False):
        if not isinstance(name, str) or len(name) > 16:
            raise CheckpointError(f"{self.path}: numpy.dtype of {shown(name)} in the pickle")
        dt = np.dtype(name)
        if dt.kind not in "biufc" or dt.fields is not None or dt.subdtype is not None:
            raise CheckpointError(f"{self.path}: numpy.dtype {shown(name)}: only plain numeric dtypes are read")
        return dt

    def _numpy_scalar(self, dtype, data=None):
        if not isinstance(dtype, np.dtype) or dtype.hasobject:
            raise CheckpointError(f"{self.path}: numpy scalar of an unexpected dtype in the pickle")
        if data is None:
            return dtype.type(0)
        if isinstance(data, str):
            data = data.encode("latin1")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise CheckpointError(f"{self.path}: corrupt numpy scalar in the pickle")
        return np.frombuffer(data, dtype)[0]

    def _safe_global(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return self._ordered_dict
        if module == "builtins":
            if name in ("set", "frozenset", "tuple", "list", "dict"):
                return self._sized(getattr(builtins, name))
            if name in ("int", "float", "complex", "bool", "str", "bytes"):
                return self._scalar(getattr(builtins, name))
            if name == "slice":
                return slice
        if module == "_codecs" and name == "encode":
            return self._codecs_encode
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            return self._numpy_scalar
        if module == "numpy" and name == "dtype":
            return self._numpy_dtype
        if module == "copyreg" and name == "_reconstructor":
            return self._reconstructor
        return None


def unpickle(data: bytes, path: Path, extra: Callable[[str, str], Any] | None = None,
             persistent: Callable[[Any], Any] | None = None, checked: bool = False) -> Any:
    """The object a pickle holds, checked first (`check_pickle`, unless the caller just
    did), built inertly."""
    if len(data) > MAX_PICKLE:
        raise CheckpointError(f"{path}: a pickle of {len(data)} bytes, more than mapspec reads ({MAX_PICKLE})")
    try:
        if not checked:
            check_pickle(data, path)
    except PickleTruncated:
        raise CheckpointError(f"{path}: the pickle ends without STOP (truncated)") from None
    try:
        return RestrictedUnpickler(data, path, extra, persistent).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable pickle ({type(exc).__name__}: {str(exc)[:160]})") from None
