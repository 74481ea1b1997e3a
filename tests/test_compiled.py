"""The compiled hot path (cudaevents._core._hot) against the simulated driver: its C code calls
the simulation through C-callable entry points (helpers.fake_driver), as it calls the real
driver's. Behaviour shared with the pure-Python path is tested by the rest of the suite, which
runs every simulated-driver test on both paths (the ``hot_path`` fixture)."""

from __future__ import annotations

import gc
import shutil
import sysconfig
import threading

import pytest
from helpers.fake_driver import FakeDriver, bound
from helpers.subproc import run_cli, run_code
from helpers.threads import join_all

import cudaevents as ce
from cudaevents._core import compiled
from cudaevents._core.errors import CudaError, NotReadyError

needs_extension = pytest.mark.skipif(compiled._hot is None, reason=f"{compiled._missing}")


def _compiler() -> str | None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc)


@pytest.mark.skipif(_compiler() is None, reason="no C compiler here, so the install could not build the extension")
def test_the_install_built_the_extension_where_a_c_compiler_is_found():
    """CI installs with the README's command on a machine with a C compiler: the extension must
    be there, or the compiled path would go untested without anyone noticing."""
    assert compiled._hot is not None, compiled._missing


@needs_extension
def test_the_methods_run_in_c_and_call_the_driver_through_its_entry_points(fake_driver, hot_path):
    if hot_path != "compiled":
        assert type(ce.CudaEvent.__dict__["record"]).__name__ == "function"
        assert compiled.describe().startswith("pure Python")
        return
    assert compiled.describe() == "compiled (cudaevents._core._hot)"
    for cls, name in ((ce.CudaEvent, "record"), (ce.CudaEvent, "__init__"), (ce.EventPool, "acquire")):
        assert type(cls.__dict__[name]).__name__ == "method_descriptor", name
    pool = ce.EventPool()
    s = ce.GpuStream()
    e = ce.CudaEvent(pool=pool).record(s)
    assert isinstance(e.handle, int) and fake_driver.recorded[-1] == (e.handle, s.handle)
    assert "cuEventRecord" in fake_driver._c_entries  # through the C entry point, not the bindings
    assert e.query() is False  # NOT_READY is a state
    fake_driver.run(s)
    assert e.query() is True
    e.close()
    assert pool.stats().live == 0 and pool.stats().cached == 1


@needs_extension
def test_every_path_gives_the_same_events_timings_and_statistics(monkeypatch):
    """The same program on both paths: the same driver calls, samples and pool counts."""
    seen = {}
    for path in (True, False):
        compiled.use(path)
        try:
            with bound(monkeypatch, FakeDriver()) as gpu:
                pool = ce.EventPool()
                s = ce.GpuStream()
                timer = ce.Timer(pool=pool, harvest_every=3, nvtx=False)
                for i in range(10):
                    with timer.region(f"r{i % 2}", s):
                        ce.CudaEvent(pool=pool).record(s).close()
                gpu.run()
                r = timer.results(timeout=10)
                s.close()  # a simulated stream: destroyed under the simulation, never later by a real driver
                seen[path] = (dict(gpu.calls), [(x.name, x.start_ms, x.duration_ms, x.step) for x in r.samples], pool.stats())
        finally:
            compiled.use(None)
    calls = {k: v for k, v in seen[True][0].items() if k not in ("cuGetProcAddress", "cuDriverGetVersion")}
    assert calls == seen[False][0] and seen[True][1:] == seen[False][1:]


@needs_extension
def test_driver_errors_become_cuda_errors_naming_the_call_and_lose_no_handle(fake_driver, hot_path):
    pool = ce.EventPool()
    s = ce.GpuStream()
    e = ce.CudaEvent(pool=pool)
    fake_driver.fail("cuEventRecord", 700)  # CUDA_ERROR_ILLEGAL_ADDRESS: sticky
    with pytest.raises(CudaError) as info:
        e.record(s)
    assert info.value.code == 700 and info.value.call == "cuEventRecord" and "sticky" in str(info.value)
    assert not e.recorded and pool.stats().live == 1  # the handle is the event's: close gives it back
    e.close()
    assert pool.stats().live == 0 and pool.stats().cached == 1
    fake_driver.fail("cuEventRecord", 0)
    e = ce.CudaEvent(pool=pool).record(s)
    fake_driver.fail("cuEventQuery", 999)
    with pytest.raises(CudaError, match="cuEventQuery"):
        e.query()
    fake_driver.fail("cuEventQuery", 0)
    start = ce.CudaEvent(timing=True, pool=pool).record(s)
    end = ce.CudaEvent(timing=True, pool=pool).record(s)
    with pytest.raises(NotReadyError):
        start.elapsed_time(end)
    fake_driver.run(s)
    assert start.elapsed_time(end) == 1.0
    for ev in (e, start, end):
        ev.close()
    assert pool.stats().live == 0


@needs_extension
def test_a_region_whose_record_fails_keeps_its_handles(fake_driver, hot_path):
    pool = ce.EventPool()
    s = ce.GpuStream()
    timer = ce.Timer(pool=pool, nvtx=False)
    with timer.region("warm", s):
        pass
    fake_driver.run(s)
    timer.harvest()  # its two handles are the timer's spares now
    spare = list(timer._spare[0])
    assert len(spare) == 2
    fake_driver.fail("cuEventRecord", 1)
    with pytest.raises(CudaError, match="cuEventRecord"):
        with timer.region("begin fails", s):
            pass
    assert sorted(timer._spare[0]) == sorted(spare)
    fake_driver.fail("cuEventRecord", 0)
    region = timer.region("end fails", s)
    region.__enter__()
    fake_driver.fail("cuEventRecord", 1)
    with pytest.raises(CudaError, match="cuEventRecord"):
        region.__exit__(None, None, None)
    fake_driver.fail("cuEventRecord", 0)
    assert sorted(timer._spare[0]) == sorted(spare) and timer.pending == 0
    timer.synchronize(timeout=10)
    st = pool.stats()  # the region's two handles came back; the timer keeps its reference event
    assert st.live == 1 and st.cached == 2 and st.creates == 3


def test_regions_that_meet_where_the_record_fails_keep_their_handles(fake_driver, hot_path):
    """Timer._meet (LayerTimer's backward) with spare handles enough, so that on the compiled
    path it records in C: a failed record gives the handles back to the spares and leaves the
    ending region open; the next meeting shares one record."""
    pool = ce.EventPool()
    s = ce.GpuStream()
    timer = ce.Timer(pool=pool, nvtx=False)
    for name in ("warm", "up"):
        with timer.region(name, s):
            pass
    fake_driver.run(s)
    timer.harvest()  # four spare handles
    x = timer.begin("x", s)
    spare = list(timer._spare[0])
    fake_driver.fail("cuEventRecord", 1)
    with pytest.raises(CudaError, match="cuEventRecord"):
        timer._meet([x], ["y"], s)
    fake_driver.fail("cuEventRecord", 0)
    assert sorted(timer._spare[0]) == sorted(spare) and x.start is not None and not timer._shared
    records = fake_driver.records
    (y,) = timer._meet([x], ["y"], s)
    assert fake_driver.records == records + 1 and y.start == x.end
    timer.end(y)
    fake_driver.run(s)
    r = {smp.name: smp for smp in timer.results(timeout=10).samples}
    assert r["x"].start_ms + r["x"].duration_ms == r["y"].start_ms
    assert pool.stats().live == 1 and not timer._shared  # the reference event


@needs_extension
def test_an_event_made_with_bad_arguments_is_refused_alike_on_both_paths(fake_driver, hot_path):
    with pytest.raises(TypeError, match="Device\\(\\) takes an integer ordinal, got bool"):
        ce.CudaEvent(device=False)  # not an unbound event
    with pytest.raises(TypeError, match="Device\\(\\) takes an integer ordinal, got bool"):
        ce.CudaEvent(False)
    ce.CudaEvent(device=None, interprocess=False).close()  # the fast path's own case


@needs_extension
def test_an_extension_that_cannot_install_its_fast_paths_leaves_everything_in_python(monkeypatch):
    from cudaevents._core import driver

    class Stale:
        def method(self):
            return "python"

    def missing(hot, cls, python):
        raise AttributeError("module 'cudaevents._core._hot' has no attribute 'install_stale'")

    monkeypatch.setattr(compiled, "_registered", list(compiled._registered))
    compiled.use(True)
    try:
        with bound(monkeypatch, FakeDriver()):
            assert compiled.active()
            compiled.register(Stale, ("method",), missing)
            for _ in range(2):  # at the registration, then at every later driver binding
                assert not compiled.active() and compiled.module() is None
                assert "does not match this package (AttributeError" in compiled.describe()
                assert "rebuild it" in compiled.describe()
                s = ce.GpuStream(0)
                ce.CudaEvent(0).record(s).close()  # in Python, on the simulated driver
                s.close()
                assert Stale().method() == "python"
                driver.rebind()
    finally:
        monkeypatch.undo()  # the registrations as they were, before the rebinding below
        compiled.use(None)


def test_pool_statistics_stay_exact_under_16_threads(fake_driver, hot_path):
    """Acquire, release, events dropped without close (their finalizers return handles with
    no lock) and batches, from 16 threads at once: every count adds up."""
    fake_driver.keeps_up = True
    pool = ce.EventPool(max_cached=24)
    s = ce.GpuStream()
    rounds = 300
    errors = []

    def work(seed: int) -> None:
        try:
            for i in range(rounds):
                kind = (seed + i) % 4
                if kind == 0:
                    ce.CudaEvent(pool=pool).record(s).close()
                elif kind == 1:
                    ce.CudaEvent(pool=pool).record(s)  # dropped: its finalizer gives the handle back
                elif kind == 2:
                    pool.release(0, 2, pool.acquire(0, 2))
                else:
                    pool.release_many(0, 2, pool.acquire_many(0, 2, 3))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    join_all(threads, timeout=60)
    gc.collect()
    assert not errors, errors
    st = pool.stats()
    acquired = 16 * rounds // 4 * (1 + 1 + 1 + 3)
    assert st.live == 0 and st.creates + st.reuses == acquired
    assert st.cached == st.creates - st.destroys and st.cached <= 24
    assert 1 <= st.high_water <= 16 * 3


@needs_extension
def test_a_driver_without_entry_points_runs_the_methods_in_python(monkeypatch):
    compiled.use(True)
    try:
        with bound(monkeypatch, FakeDriver(no_entry_points=True)) as gpu:
            assert not compiled.active() and "no entry points" in compiled.describe()
            pool = ce.EventPool()
            s = ce.GpuStream()
            e = ce.CudaEvent(pool=pool).record(s)  # the C method hands over to Python's
            assert gpu.recorded[-1] == (int(e.handle), s.handle) and "cuEventRecord" not in gpu._c_entries
            gpu.run()
            assert e.query()
            e.close()
            s.close()  # destroyed under the simulation (a GPU machine's driver would crash on its handle)
            assert pool.stats().live == 0
    finally:
        compiled.use(None)


@needs_extension
def test_the_counter_word_is_atomic_and_its_spin_gives_up_in_time():
    import ctypes

    buf = (ctypes.c_uint64 * 2)()
    w64 = compiled._hot.Word(ctypes.addressof(buf), 64)
    w32 = compiled._hot.Word(ctypes.addressof(buf) + 8, 32)
    w64.value = (1 << 62) + 5
    w32.value = 7
    assert buf[0] == (1 << 62) + 5 and w64.value == buf[0] and w32.value == 7
    with pytest.raises(OverflowError, match="32 bits"):
        w32.value = 1 << 32
    with pytest.raises(ValueError, match="32 or 64 bits"):
        compiled._hot.Word(ctypes.addressof(buf), 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        compiled._hot.Word(ctypes.addressof(buf) + 4, 64)
    assert w32.spin(7, 1.0) is True and w32.spin(8, 0.01) is False
    setter = threading.Timer(0.05, lambda: setattr(w32, "value", 9))
    setter.start()
    try:
        assert w32.spin(9, 10.0) is True  # the GIL is released while it spins: the timer thread runs
    finally:
        setter.join(timeout=10)


@needs_extension
def test_cudaevents_info_says_which_hot_path_runs():
    out = run_cli("info", env={"CUDAEVENTS_PURE_PYTHON": "0"})
    assert out.returncode == 0 and "hot path: compiled (cudaevents._core._hot)" in out.stdout, out
    out = run_cli("info", env={"CUDAEVENTS_PURE_PYTHON": "1"})
    assert out.returncode == 0 and "hot path: pure Python (CUDAEVENTS_PURE_PYTHON=1)" in out.stdout, out
    out = run_cli("info", env={"CUDAEVENTS_PURE_PYTHON": "yes"})
    assert out.returncode == 0 and "CUDAEVENTS_PURE_PYTHON='yes': set it to 1" in out.stdout, out


@needs_extension
def test_a_forked_child_runs_nothing_compiled():
    """After a fork from a CUDA-initialized parent the C methods have no entry points: every use refuses."""
    code = """
import os, sys
sys.path.insert(0, "tests")
from helpers.fake_driver import install
from helpers.forking import expect_fork_error
import cudaevents as ce
from cudaevents._core import compiled
install(keeps_up=True)
s = ce.GpuStream()
e = ce.CudaEvent().record(s)
assert compiled.active()
pid = os.fork()
if pid == 0:
    ok = not compiled.active()
    expect_fork_error("record", e.record, s)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print("child status", os.waitstatus_to_exitcode(status))
"""
    out = run_code(code, timeout=60, env={"CUDAEVENTS_PURE_PYTHON": "0"})
    assert out.returncode == 0 and "child status 0" in out.stdout, out


@needs_extension
@pytest.mark.parametrize("gpu_backend", ["mem64", "mem32"], indirect=True)
def test_a_host_wait_on_a_mem_counter_spins_in_c_and_wakes_on_the_store(fake_driver, hot_path, gpu_backend):
    """The spinning phase of a host wait reads the counter's word in C with the GIL released:
    a store from another thread (as from the GPU) ends it, and a deadline still holds."""
    from cudaevents._sync import counter_storage

    counter = ce.AtomicEvent(0)
    spinner = counter._cell.spinner(3)
    assert (spinner is not None) == (hot_path == "compiled")
    with pytest.raises(TimeoutError):
        counter.wait(3, timeout=0.05, policy="spin")
    setter = threading.Timer(0.05, lambda: counter._cell.store(3))  # the word changes, no notify
    setter.start()
    try:
        counter.wait(3, timeout=10, policy="spin")
    finally:
        setter.join(timeout=10)
    assert counter.value == 3 and isinstance(counter._cell, counter_storage.MemCell)
    counter.close()


def test_a_record_on_the_default_stream_pushes_a_context_only_when_another_is_current(fake_driver, hot_path):
    """Handle 0 (torch's default stream, the legacy one) names a stream of whatever context is
    current: with the stream's device's primary context current the record goes straight to
    the driver (in C on the compiled path); with none current it is pushed around the record."""
    from cudaevents._core import driver

    driver.primary_context(0)
    legacy = ce.as_stream(None, device=0)
    pool = ce.EventPool()
    fake_driver.current_context = 0x100  # device 0's primary context
    e = ce.CudaEvent(pool=pool).record(legacy)
    assert fake_driver.recorded[-1] == (int(e.handle), 0) and fake_driver.calls["cuCtxPushCurrent"] == 0
    if hot_path == "compiled":
        assert "cuCtxGetCurrent" in fake_driver._c_entries  # C asked which context is current
    fake_driver.current_context = 0
    e.record(legacy)
    assert fake_driver.calls["cuCtxPushCurrent"] == 1 and fake_driver.calls["cuCtxPopCurrent"] == 1
    e.close()
