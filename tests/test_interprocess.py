"""Interprocess events without a GPU: what can be sent, one pickling per send, the export done
once per event, the recycling rule (an exported event goes back to its pool only once every
send is released, in this process and across spawned ones), stale releases, a dead exporter,
and a forked receiver."""

from __future__ import annotations

import os
import pickle
import time

import pytest

import cudaevents as ce
from cudaevents._core import interprocess
from helpers import ipc_peers
from helpers.spawning import joined
from helpers.fakes import fake_stream
from helpers.forking import wait_for_child

TIMEOUT = 60.0


def _recorded():
    """An interprocess event of the simulated GPU, recorded (what may be sent)."""
    return ce.CudaEvent(0, interprocess=True).record(fake_stream(0x10))


def _sent(event):
    """A send of ``event`` as a receiver gets it (pickled and unpickled in this process)."""
    return pickle.loads(pickle.dumps(event.ipc_handle()))


def _until(predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_only_an_open_recorded_interprocess_event_can_be_sent(fake_driver):
    with pytest.raises(ce.NotShareableError, match=r"interprocess=True"):
        ce.CudaEvent(0).ipc_handle()
    with pytest.raises(ce.NotRecordedError, match=r"record\(stream\) before sending"):
        ce.CudaEvent(interprocess=True).ipc_handle()  # not even bound to a device
    with pytest.raises(ce.NotRecordedError, match="would order nothing"):
        ce.CudaEvent(0, interprocess=True).ipc_handle()
    closed = ce.CudaEvent(0, interprocess=True)
    closed.close()
    with pytest.raises(ce.ClosedError, match="send an open one"):
        closed.ipc_handle()
    with pytest.raises(ValueError, match="timing=False"):
        ce.CudaEvent(0, timing=True, interprocess=True)
    with pytest.raises(ce.NotShareableError, match=r"interprocess=True and send event.ipc_handle\(\)"):
        pickle.dumps(ce.CudaEvent(0, interprocess=True))


def test_a_send_pickles_once_and_its_receiver_waits_on_the_exported_event(fake_driver):
    s = ce.GpuStream(0)
    event = ce.CudaEvent(0, interprocess=True).record(s)
    send = event.ipc_handle()
    data = pickle.dumps(send)
    with pytest.raises(ce.ClosedError, match=r"new event.ipc_handle\(\)"):
        pickle.dumps(send)  # one receiver per send
    with pytest.raises(ce.ClosedError, match="released or pickled"):
        send.wait(s)  # the sent copy is the receiver's now
    received = pickle.loads(data)
    assert isinstance(received, ce.IpcEvent) and received.exporter_pid == os.getpid()
    received.wait(s)
    assert fake_driver.waited[-1] == (int(s.handle), event.handle)
    assert received.query() is False
    fake_driver.run(s)
    assert received.query() is True
    received.synchronize(timeout=5)
    with pytest.raises(ce.NotShareableError, match="cannot be sent on"):
        pickle.dumps(received)
    received.release()
    assert received.released
    with pytest.raises(ce.ClosedError, match="released"):
        received.wait(s)


def test_the_handle_is_exported_once_per_event(fake_driver):
    event = _recorded()
    sends = [_sent(event) for _ in range(3)]
    assert fake_driver.ipc_exports == 1
    assert interprocess.stats()["unreleased"] == 3
    for send in sends:
        send.release()
    assert interprocess.stats()["unreleased"] == 0


def test_a_resent_pooled_event_keeps_its_identity_unless_it_is_another_native_event(fake_driver):
    event = _recorded()
    native, first = event.handle, _sent(event)
    first.release()
    event.close()
    again = _recorded()
    assert again.handle == native
    second = _sent(again)
    assert second._uid == first._uid  # receivers' cached opened handle serves it
    assert fake_driver.ipc_exports == 2  # one look at the handle per pool life, none per send
    _sent(again).release()
    assert fake_driver.ipc_exports == 2
    second.release()
    again.close()
    # the pool destroyed it and the driver gave its number to a new event: another handle
    fake_driver.cuIpcGetEventHandle = lambda event: (0, fake_driver.ipc_handle(b"another event"))
    third = _sent(_recorded())
    assert third._uid != first._uid


def test_handle_bytes_go_through_the_drivers_handle_type_whole(fake_driver):
    from cudaevents._core import driver

    event = _recorded()
    exported = driver.ipc_event_handle(0, event.handle)
    assert exported == b"%d:%d" % (os.getpid(), int(event.handle)) + bytes(64 - len(b"%d:%d" % (os.getpid(), int(event.handle))))
    data = bytes(range(1, 65))  # no zero byte to cut it short
    driver.ipc_open_event(0, data)
    assert fake_driver.ipc_opened == [data]
    with pytest.raises(ValueError, match="64 bytes, not 3"):
        driver.ipc_open_event(0, b"abc")
    event.close()


def test_an_exported_event_returns_to_its_pool_only_once_every_send_is_released(fake_driver):
    event = _recorded()
    native = event.handle
    kept_here = event.ipc_handle()  # a send never pickled: the exporter holds it
    received = _sent(event)
    event.close()
    assert interprocess.stats() == {"sends": 2, "unreleased": 2, "held": 1}
    other = ce.CudaEvent(0, interprocess=True)
    assert other.handle != native  # the pool made another: the exported one is held
    kept_here.release()
    assert interprocess.stats()["held"] == 1
    del received  # dropping a received send releases it
    assert interprocess.stats() == {"sends": 2, "unreleased": 0, "held": 0}
    assert ce.CudaEvent(0, interprocess=True).handle == native  # back in the pool


def test_a_receiver_waiting_after_the_exporter_closed_the_event_waits_for_the_record_it_was_sent(fake_driver):
    """The rule's point: had the closed event been recycled, the receiver's late wait would
    wait on the other work's record instead (here: on an idle stream, so it would not wait)."""
    busy, idle, consumer = ce.GpuStream(0), ce.GpuStream(0), ce.GpuStream(0)
    event = ce.CudaEvent(0, interprocess=True).record(busy)
    native = event.handle
    received = _sent(event)
    event.close()
    later = ce.CudaEvent(0, interprocess=True).record(idle)  # what the recycled event would be
    assert later.handle != native
    received.wait(consumer)
    assert fake_driver.waited[-1] == (int(consumer.handle), native)
    assert [s for e, s in fake_driver.recorded if e == native] == [int(busy.handle)]


def test_a_stale_release_of_a_reused_slot_releases_nothing(fake_driver):
    event = _recorded()
    first = _sent(event)
    path, slot, seq = first._path, first._slot, first._seq
    first.release()
    second = _sent(event)
    assert (second._path, second._slot) == (path, slot) and second._seq != seq  # the slot again
    interprocess._ack_file(path).words[slot] = seq + 1  # the first receiver's release, again
    assert interprocess.stats()["unreleased"] == 1
    second.release()
    assert interprocess.stats()["unreleased"] == 0


def test_a_spawned_receiver_releases_its_sends_explicitly_and_by_exiting(fake_driver, spawned):
    event = _recorded()
    native = event.handle
    child, inbox, outbox = spawned(ipc_peers.receive_and_release)
    inbox.put(event.ipc_handle())
    inbox.put(event.ipc_handle())
    assert outbox.get(timeout=TIMEOUT) == ("IpcEvent", os.getpid(), False, os.getpid())
    event.close()
    assert interprocess.stats()["held"] == 1
    inbox.put("release")
    assert outbox.get(timeout=TIMEOUT) == "released"
    assert interprocess.stats() == {"sends": 2, "unreleased": 1, "held": 1}
    inbox.put("exit")
    joined(child, timeout=TIMEOUT)
    _until(lambda: interprocess.stats()["held"] == 0, "the exiting receiver's release")
    assert ce.CudaEvent(0, interprocess=True).handle == native


def test_a_receiver_whose_exporter_ended_gets_peer_died(fake_driver, spawned):
    child, inbox, outbox = spawned(ipc_peers.export_until_told)
    received = outbox.get(timeout=TIMEOUT)
    assert received.exporter_pid == child.pid
    assert received.query() is True  # opened here (a simulated open), while the exporter runs
    assert fake_driver.ipc_opens == 1
    inbox.put("exit")
    assert outbox.get(timeout=TIMEOUT) == 1  # the exporter exported once
    joined(child, timeout=TIMEOUT)
    for use in (received.query, lambda: received.wait(ce.GpuStream(0)),
                lambda: received.synchronize(timeout=5)):
        with pytest.raises(ce.PeerError, match=f"pid {child.pid}.*has ended"):
            use()


def test_a_receiver_forked_after_cuda_use_is_refused_and_told_to_spawn(fake_driver):
    from helpers.forking import expect_fork_error

    data = pickle.dumps(_recorded().ipc_handle())
    pid = os.fork()
    if pid == 0:  # the child: exit status 0 only if refused as it should be
        code = 1
        try:
            received = pickle.loads(data)
            expect_fork_error("IpcEvent.query() in a forked child", received.query)
            code = 0
        finally:
            os._exit(code)
    status = wait_for_child(pid, TIMEOUT)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_forked_childs_copies_of_sends_release_nothing_of_its_parents(fake_driver):
    event = _recorded()
    kept = event.ipc_handle()  # the exporter's own send, not pickled
    received = _sent(event)
    assert interprocess.stats()["unreleased"] == 2
    pid = os.fork()
    if pid == 0:  # the child drops both copies and exits
        code = 1
        try:
            import gc

            del kept, received
            gc.collect()
            code = 0
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(wait_for_child(pid, TIMEOUT)) == 0
    assert interprocess.stats()["unreleased"] == 2  # still out: the parent's receiver has not waited
    received.release()
    kept.release()
    assert interprocess.stats()["unreleased"] == 0
    event.close()


def test_a_driver_error_while_the_exporter_ends_during_a_wait_is_peer_died(fake_driver, monkeypatch):
    s = ce.GpuStream(0)
    fake_driver.enqueue_work(s)
    event = ce.CudaEvent(0, interprocess=True).record(s)
    received = _sent(event)
    looks = []
    monkeypatch.setattr(interprocess.processes, "alive", lambda identity: looks.append(identity) or len(looks) == 1)
    fake_driver.fail("cuEventQuery", 400)  # the exporter's context went with it
    with pytest.raises(ce.PeerError, match="has ended"):
        received.synchronize(timeout=5)
    fake_driver.fail("cuEventQuery", 0)
    monkeypatch.undo()
    fake_driver.run(s)
    received.release()
    event.close()
