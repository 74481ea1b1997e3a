"""Which hot path runs: the compiled extension (``cudaevents._core._hot``) or pure Python.

The extension is built by the package's install where a C compiler is found (setup.py); it
needs no CUDA toolkit: the driver's entry points are found at run time with
``cuGetProcAddress`` once the driver is initialized. It holds the calls made per event and
per region (records, queries, waits, the pool's acquire and release, the Timer's regions and
harvest, the counters' words) as fast paths installed on the Python classes; every case that
needs deciding still runs the Python method it replaces (see ``_hot.c``).

The compiled path is used when the extension imports, ``CUDAEVENTS_PURE_PYTHON`` is not set
to ``1``, and the bound driver gives the entry points; otherwise everything runs in Python
and behaves the same. :func:`describe` says which (``cudaevents info`` prints it).
"""

from __future__ import annotations

import threading

from . import env

__all__ = ["active", "describe", "module", "new_lock", "register", "use"]

try:
    from . import _hot
except ImportError as exc:  # not built here (no C compiler at install time), or a broken build
    _hot = None
    _missing = f"the extension cudaevents._core._hot is not built ({exc})"
else:
    _missing = None

# The entry points the extension calls (the names cuGetProcAddress knows them by).
ENTRY_POINTS = ("cuEventRecord", "cuEventQuery", "cuEventSynchronize", "cuEventElapsedTime",
                "cuStreamWaitEvent", "cuStreamQuery", "cuStreamSynchronize", "cuCtxGetCurrent")

# The driver module's wrappers that the extension's functions of the same names replace.
DRIVER_WRAPPERS = ("event_record", "event_query", "event_synchronize", "event_elapsed_ms",
                   "stream_wait_event", "stream_query", "stream_synchronize")

_enabled: bool | None = None  # use(); None: as CUDAEVENTS_PURE_PYTHON says
_installed = False  # the fast paths are on the classes
_bound = False  # ... and the extension has a driver's entry points
_why = ""  # why the pure-Python path runs, or why the driver calls do
_registered: list = []  # (owner, {name: Python value}, installer, needs_driver)


def new_lock():
    """A lock for state the compiled fast paths share with Python code: the extension's
    ``Lock`` (which C takes without a method call) where it is built, else ``threading.Lock``."""
    return threading.Lock() if _hot is None else _hot.Lock()


def module():
    """The extension module while the compiled path is installed (with or without a driver's
    entry points), else ``None``: for code that builds objects around its functions."""
    return _hot if _installed else None


def active() -> bool:
    """True while the compiled hot path is in use with a driver's entry points."""
    return _installed and _bound


def describe() -> str:
    """Which hot path is in use, and why, in one line."""
    if not _installed:
        return f"pure Python ({_why})"
    if not _bound:
        return f"compiled (cudaevents._core._hot); {_why}"
    return "compiled (cudaevents._core._hot)"


def register(owner, names, installer, *, needs_driver: bool = False) -> None:
    """Let the compiled path replace ``names`` of ``owner`` (a class or a module):
    ``installer(hot, owner, originals)`` returns ``{name: replacement}``, where ``originals`` maps
    each name to the Python value it replaces (the fallback a fast path hands over to).
    Replacements that call the driver with no fallback of their own (``needs_driver``) are
    installed only while the extension has a driver's entry points; the methods hand over to
    their Python versions until then."""
    originals = {name: getattr(owner, name) if not isinstance(owner, type) else owner.__dict__[name]
                 for name in names}
    entry = (owner, originals, installer, needs_driver)
    _registered.append(entry)
    if _installed and (_bound or not needs_driver):
        try:
            _install(entry)
        except Exception as exc:
            _fall_back(exc)


def _install(entry) -> None:
    owner, originals, installer, _ = entry
    for name, value in installer(_hot, owner, dict(originals)).items():
        setattr(owner, name, value)
    if isinstance(owner, type):
        _hot.speed_slots(owner)  # (setting the originals back, _uninstall, undoes it)


def _uninstall(entry) -> None:
    owner, originals, _, _ = entry
    for name, value in originals.items():
        setattr(owner, name, value)


def _wanted() -> bool:
    """Whether the compiled path should run (setting ``_why`` when not)."""
    global _why
    if _hot is None:
        _why = _missing
        return False
    if _enabled is not None:
        _why = "" if _enabled else "switched off with compiled.use(False)"
        return _enabled
    try:
        pure = env.pure_python()
    except ValueError as exc:  # said at every driver binding, and by cudaevents info
        _why = str(exc)
        return False
    _why = "CUDAEVENTS_PURE_PYTHON=1" if pure else ""
    return not pure


def entry_addresses(d) -> dict[str, int]:
    """The addresses of :data:`ENTRY_POINTS` in the driver module ``d`` (cuda.bindings'
    ``cuGetProcAddress`` for the driver's own CUDA version); raises ``LookupError``."""
    err, version = d.cuDriverGetVersion()
    if err:
        raise LookupError(f"cuDriverGetVersion failed ({err})")
    flags = d.CUdriverProcAddress_flags.CU_GET_PROC_ADDRESS_DEFAULT
    out = {}
    for name in ENTRY_POINTS:
        try:
            res = d.cuGetProcAddress(name, int(version), flags)
        except TypeError:  # bindings that take the symbol as bytes
            res = d.cuGetProcAddress(name.encode(), int(version), flags)
        if res[0] or not int(res[1] or 0):
            raise LookupError(f"cuGetProcAddress({name!r}) gave {res}")
        out[name] = int(res[1])
    return out


def bind_driver(d, raise_code, contexts: dict) -> bool:
    """Called by the driver module whenever it binds a driver ``d`` (``None``: none yet): the
    compiled path takes ``d``'s entry points if it is wanted and ``d`` gives them, else runs
    without them or not at all; returns :func:`active`. ``contexts`` maps each device to its
    primary context (an int), as the driver module fills it: a record on a special stream
    handle (0, 1, 2: torch's default stream is 0) stays in C while that context is current."""
    global _installed, _bound, _why
    for entry in _registered:  # start over: the old entry points may go away (a stand-in driver)
        if _installed and (_bound or not entry[3]):
            _uninstall(entry)
    _installed = _bound = False
    if _hot is None:
        _why = _missing
        return False
    _hot.unbind()
    if not _wanted():
        return False
    if d is None:
        _why = "no driver bound yet (it is loaded at the first CUDA use)"
    else:
        try:
            _hot.bind(entry_addresses(d), raise_code, contexts, d)
            _bound = True
        except Exception as exc:  # no cuGetProcAddress (a stand-in driver, a forked child's refusals)
            _why = f"driver calls in Python: the driver gave no entry points ({type(exc).__name__}: {exc})"
    _installed = True
    try:
        for entry in _registered:
            if _bound or not entry[3]:
                _install(entry)
    except Exception as exc:
        _fall_back(exc)
    return active()


def _fall_back(exc: Exception) -> None:
    """An installer failed (an extension built from other sources than this package's, e.g. a
    stale in-place build): everything back to Python, saying why."""
    global _installed, _bound, _why
    for entry in _registered:
        _uninstall(entry)
    _installed = _bound = False
    _hot.unbind()
    _why = (f"the extension cudaevents._core._hot does not match this package ({type(exc).__name__}: {exc}); "
            "rebuild it (reinstall cudaevents)")


def use(enabled: bool | None) -> bool:
    """Switch the compiled path on (``True``), off (``False``), or back to what
    ``CUDAEVENTS_PURE_PYTHON`` says (``None``), for the driver bound now and later ones; for
    tests and benchmarks that compare the two. Returns :func:`active`."""
    global _enabled
    from . import driver

    _enabled = enabled
    driver.rebind()
    return active()
