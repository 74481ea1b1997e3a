"""The other process of the interprocess tests, started with multiprocessing's 'spawn' method:
each function here runs as a child's target and talks to the test through two queues.

Every queue read has a timeout, so a child whose test went away ends instead of hanging."""

from __future__ import annotations

TIMEOUT = 60.0


def receive_and_release(inbox, outbox) -> None:
    """Receive two sends; report them; release the first when told; drop the second by exiting."""
    first = inbox.get(timeout=TIMEOUT)
    second = inbox.get(timeout=TIMEOUT)
    outbox.put((type(first).__name__, first.exporter_pid, first.released, second.exporter_pid))
    assert inbox.get(timeout=TIMEOUT) == "release"
    first.release()
    outbox.put("released")
    assert inbox.get(timeout=TIMEOUT) == "exit"
    # the second send goes with this process: dropping it releases it


def export_until_told(inbox, outbox) -> None:
    """Export a recorded interprocess event on the simulated driver, send it, and stay until told."""
    import cudaevents as ce
    from helpers.fake_driver import install

    fake = install(keeps_up=True)
    event = ce.CudaEvent(0, interprocess=True)
    event.record(ce.GpuStream(0))
    outbox.put(event.ipc_handle())
    assert inbox.get(timeout=TIMEOUT) == "exit"
    outbox.put(fake.ipc_exports)
