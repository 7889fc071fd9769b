"""A restricted unpickler for checkpoints from anywhere: no code runs, no size is taken on trust.

Two passes over every pickle:

1. `check_pickle` walks the opcodes with `pickletools.genops` (pure Python, no recursion, no
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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import CheckpointError
from .reading import clip, shown

MAX_DEPTH = 256  # nesting of containers in a pickle, and of anything walked recursively
MAX_INT_BYTES = 256  # binary integers (LONG1/LONG4) wider than this are refused
MAX_PICKLE = 256 << 20  # bytes of one pickle (the tensors' data is outside it)
MAX_NODES = 2_000_000  # objects visited when walking what a pickle built

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

_MARK = pickletools.markobject
# Opcodes that add children to the container below them, and those that build a new one.
_MUTATORS = {"APPEND", "APPENDS", "SETITEM", "SETITEMS", "ADDITEMS", "BUILD"}
_BUILDERS = {"TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "LIST", "DICT", "FROZENSET", "EMPTY_LIST", "EMPTY_DICT",
             "EMPTY_TUPLE", "EMPTY_SET", "OBJ", "INST"}
_CALLS = {"REDUCE", "NEWOBJ", "NEWOBJ_EX"}
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}


def check_pickle(stream, path: Path, start: int = 0) -> int:
    """Walk one pickle's opcodes from `stream` (file-like) and refuse what is unsafe to
    build; returns the position just after its STOP. Offsets in messages are file offsets."""
    nodes: list[int] = []  # depth of each object built so far
    sizes: list[int] = []  # objects in each one's tree, shared references counted each time
    stack: list[int] = []  # node ids on the unpickler's stack
    marks: list[int] = []
    memo: dict[int, int] = {}
    ops = 0
    pos = start

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: malformed or unsafe pickle at byte {pos}: {why}")

    def new(depth: int, size: int) -> int:
        if depth > MAX_DEPTH:
            raise CheckpointError(f"{path}: the pickle nests deeper than {MAX_DEPTH} levels (byte {pos})")
        nodes.append(depth)
        sizes.append(_expanded(size, pos))
        return len(nodes) - 1

    def _expanded(size: int, at: int) -> int:
        # Hashing, comparing or printing a tuple walks its whole tree, shared parts again
        # each time: a few bytes of memo references can make it astronomically large.
        if size > MAX_NODES:
            raise CheckpointError(f"{path}: the pickle builds an object of more than {MAX_NODES:,} parts through "
                                  f"shared references (byte {at}); refusing")
        return size

    try:
        for op, arg, at in pickletools.genops(stream):
            pos = start + (at or 0)
            ops += 1
            name = op.name
            if name == "MARK":
                marks.append(len(stack))
                continue
            if name == "STOP":
                if len(stack) != 1:
                    raise bad("STOP with a stack of %d items" % len(stack))
                return start + stream.tell()
            if name in _PUTS or name == "MEMOIZE":
                if not stack:
                    raise bad("memo store from an empty stack")
                index = len(memo) if name == "MEMOIZE" else arg
                if not isinstance(index, int) or index < 0 or index > ops:
                    raise bad(f"memo index {index} (the C unpickler would size its memo to it)")
                memo[index] = stack[-1]
                continue
            if name in _GETS:
                if arg not in memo:
                    raise bad(f"memo index {arg} was never stored")
                stack.append(memo[arg])
                continue
            if name == "DUP":
                if not stack:
                    raise bad("DUP on an empty stack")
                stack.append(stack[-1])
                continue
            before = op.stack_before
            if _MARK in before:
                if not marks:
                    raise bad(f"{name} without a MARK")
                m = marks.pop()
                items = stack[m:]
                del stack[m:]
                n_pre = before.index(_MARK)
                if len(stack) < n_pre:
                    raise bad(f"{name} on an empty stack")
                pre = stack[len(stack) - n_pre:]
                del stack[len(stack) - n_pre:]
                popped = pre + items
            else:
                n = len(before)
                if len(stack) < n:
                    raise bad(f"{name} on a stack of {len(stack)} items")
                popped = stack[len(stack) - n:]
                del stack[len(stack) - n:]
            depths = [nodes[i] for i in popped]
            if name in _MUTATORS:
                if not popped:
                    raise bad(f"{name} without a container")
                container, children = popped[0], depths[1:]
                if children:
                    sizes[container] = _expanded(sizes[container] + sum(sizes[i] for i in popped[1:]), pos)
                    nodes[container] = max(nodes[container], 1 + max(children))
                    if nodes[container] > MAX_DEPTH:
                        raise CheckpointError(f"{path}: the pickle nests deeper than {MAX_DEPTH} levels (byte {pos})")
                stack.append(container)
            elif op.stack_after:
                size = 1 + sum(sizes[i] for i in popped)
                if name in _BUILDERS:
                    depth = 1 + max(depths, default=0)
                elif name in _CALLS:
                    depth = max(depths, default=0)
                else:
                    depth, size = 0, 1
                stack.append(new(depth, size))
            if name in ("LONG1", "LONG4") and isinstance(arg, int) and (arg.bit_length() + 7) // 8 > MAX_INT_BYTES:
                raise bad(f"an integer of {(arg.bit_length() + 7) // 8} bytes")
    except CheckpointError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, UnicodeDecodeError, EOFError) as exc:
        raise bad(str(exc)[:160]) from None
    raise bad("the pickle ends without STOP")


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
        if dt.hasobject or dt.fields is not None or dt.subdtype is not None:
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
             persistent: Callable[[Any], Any] | None = None) -> Any:
    """The object a pickle holds, checked first (`check_pickle`), built inertly."""
    if len(data) > MAX_PICKLE:
        raise CheckpointError(f"{path}: a pickle of {len(data)} bytes, more than mapspec reads ({MAX_PICKLE})")
    check_pickle(io.BytesIO(data), path)
    try:
        return RestrictedUnpickler(data, path, extra, persistent).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable pickle ({type(exc).__name__}: {str(exc)[:160]})") from None
