"""C-callable entry points into a simulated driver, for the compiled hot path: what
``cuGetProcAddress`` gives in :mod:`helpers.fake_driver` and :mod:`helpers.stress_sim`. Each is
a ctypes callback with the driver function's C signature that calls the simulation's Python
method of the same name (taking the GIL, as any callback into Python does) and returns its
error code, writing its value through the pointer argument where the call has one."""

from __future__ import annotations

import ctypes

_ptr = ctypes.c_void_p
_CODE = ctypes.c_int


def _h(p) -> int:
    return p or 0  # ctypes passes a NULL pointer as None


# C signatures of the entry points the compiled path calls, and how each calls the simulation.
_C_ENTRIES = {
    "cuEventRecord": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr, _ptr)(lambda e, s: f.cuEventRecord(_h(e), _h(s))[0]),
    "cuEventQuery": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr)(lambda e: f.cuEventQuery(_h(e))[0]),
    "cuEventSynchronize": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr)(lambda e: f.cuEventSynchronize(_h(e))[0]),
    "cuStreamWaitEvent": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr, _ptr, ctypes.c_uint)(
        lambda s, e, flags: f.cuStreamWaitEvent(_h(s), _h(e), flags)[0]),
    "cuStreamQuery": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr)(lambda s: f.cuStreamQuery(_h(s))[0]),
    "cuStreamSynchronize": lambda f: ctypes.CFUNCTYPE(_CODE, _ptr)(lambda s: f.cuStreamSynchronize(_h(s))[0]),
    "cuEventElapsedTime": lambda f: ctypes.CFUNCTYPE(_CODE, ctypes.POINTER(ctypes.c_float), _ptr, _ptr)(
        lambda out, a, b: _elapsed_into(out, f.cuEventElapsedTime(_h(a), _h(b)))),
    "cuCtxGetCurrent": lambda f: ctypes.CFUNCTYPE(_CODE, ctypes.POINTER(_ptr))(
        lambda out: _value_into(out, f.cuCtxGetCurrent())),
}


def _value_into(out, result) -> int:
    err, value = result
    if not err:
        out[0] = value or None
    return err


def _elapsed_into(out, result) -> int:
    err, ms = result
    if not err:
        out[0] = ms
    return err


def proc_address(driver, name, cache: dict) -> tuple:
    """``cuGetProcAddress``'s answer for ``name`` of ``driver``: ``(0, address, 0)``, or a NULL
    address (``SYMBOL_NOT_FOUND``) for an entry point the compiled path does not call. The
    callbacks are kept in ``cache`` (they must live as long as they may be called)."""
    if isinstance(name, bytes):
        name = name.decode()
    make = _C_ENTRIES.get(name)
    if make is None:
        return (0, 0, 1)
    fn = cache.get(name)
    if fn is None:
        fn = cache[name] = make(driver)
    return (0, ctypes.cast(fn, ctypes.c_void_p).value, 0)
