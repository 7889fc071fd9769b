"""Running as an ordinary user would, even as root: permission checks do not apply to root
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so a test of "no permission" run as root proves
nothing. `drop_file_override()` removes those two capabilities from this process
(Linux `capset` for this process, which a forked child keeps with its imports, and the
bounding set, so a program it runs (`preexec_fn`) starts without them too); uid stays 0,
so files root owns stay readable as their owner's. Elsewhere, or not root, it does
nothing: the permission bits already apply."""

from __future__ import annotations

import ctypes
import os
import sys

CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 1, 2
_VERSION_3 = 0x20080522
_PR_CAPBSET_DROP = 24


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def drop_file_override() -> bool:
    """True when this process now meets file permissions like any user."""
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):  # out of the bounding set: gone after exec too
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)
    header, data = _Header(_VERSION_3, 0), (_Data * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return False
    mask = ~((1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)) & 0xFFFFFFFF
    data[0].effective &= mask
    data[0].permitted &= mask
    data[0].inheritable &= mask
    return libc.capset(ctypes.byref(header), data) == 0


def permissions_apply() -> bool:
    """Whether a file without read permission really is unreadable here (probed)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "probe")
        with open(p, "w") as f:
            f.write("x")
        os.chmod(p, 0)
        try:
            open(p).close()
            return False
        except PermissionError:
            return True
