"""The other processes of the GPU interprocess tests, started with multiprocessing's 'spawn'
method (PyTorch and a GPU in each): each function runs as a child's target and talks to the
test through two queues, every read with a timeout."""

from __future__ import annotations

import time

TIMEOUT = 60.0
CYCLES_PER_MS = 2_000_000  # torch.cuda._sleep cycles per millisecond, roughly (an H200 clocks ~1.98 GHz)


def synced(stream=None) -> None:
    """Wait for a torch ``stream`` (default: the current one) with a timeout, not torch's
    unbounded synchronize."""
    import torch

    import cudaevents as ce

    ce.as_stream(torch.cuda.current_stream() if stream is None else stream).synchronize(timeout=TIMEOUT)


def sum_when_told(buffers, inbox, outbox) -> None:
    """For each ``(send, wait)`` received: on a GPU stream, wait for the send (if ``wait``,
    once told "go"), sum each of ``buffers``, release the send and report the sums; ``None``
    ends."""
    import torch

    import cudaevents as ce

    stream = torch.cuda.Stream()
    gs = ce.as_stream(stream)
    buffers[0].sum()  # load the kernel before any "not finished yet" state
    synced()
    outbox.put("ready")
    while (msg := inbox.get(timeout=TIMEOUT)) is not None:
        sent, wait = msg
        if wait:
            assert inbox.get(timeout=TIMEOUT) == "go"  # the exporter has done what it does before the wait
            sent.wait(gs)
        with torch.cuda.stream(stream):
            totals = [b.sum(dtype=torch.int64) for b in buffers]
        synced(stream)
        sent.release()
        outbox.put([int(t) for t in totals])


def export_behind_a_sleep(ms: float, others: list, inbox, outbox) -> None:
    """Record an interprocess event behind a ``ms`` GPU sleep, send it to the test (``outbox``)
    and to each queue of ``others``, then wait to be killed (or told to exit)."""
    import torch

    import cudaevents as ce

    torch.cuda._sleep(1000)
    synced()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(int(ms * CYCLES_PER_MS))
    event = ce.CudaEvent(0, interprocess=True).record(ce.as_stream(stream))
    for queue in [outbox, *others]:
        queue.put(event.ipc_handle())
    assert inbox.get(timeout=TIMEOUT) == "exit"


def wait_on_the_host(inbox, outbox) -> None:
    """Receive a send and synchronize on it; report ``(exception name or None, message, seconds
    from the "killed" message to the end of the wait)``."""
    import cudaevents  # noqa: F401  (IpcEvent unpickles through it)

    sent = inbox.get(timeout=TIMEOUT)
    outbox.put("waiting")
    try:
        sent.synchronize(timeout=TIMEOUT)
        outcome = (None, "")
    except Exception as exc:  # reported to the test
        outcome = (type(exc).__name__, str(exc))
    ended = time.time()
    killed_at = inbox.get(timeout=TIMEOUT)
    outbox.put((*outcome, ended - killed_at))


def receive_wait_and_exit(inbox, outbox) -> None:
    """Receive two sends, enqueue a GPU wait on each, and return without releasing them (they
    are dropped with this function's frame)."""
    import torch

    import cudaevents as ce

    gs = ce.as_stream(torch.cuda.Stream())
    sends = [inbox.get(timeout=TIMEOUT) for _ in range(2)]
    for sent in sends:
        sent.wait(gs)
    gs.synchronize(timeout=TIMEOUT)
    outbox.put("waited")


def copy_to_gpu_1_and_sum(buffer, inbox, outbox) -> None:
    """For each send received: a stream of GPU 1 waits for it, copies ``buffer`` (on GPU 0)
    over and sums the copy; the sum is reported. ``None`` ends."""
    import torch

    import cudaevents as ce

    torch.cuda.set_device(1)
    stream = torch.cuda.Stream(1)
    gs = ce.as_stream(stream)
    buffer.to(1).sum()  # load the kernels
    synced()  # GPU 1's current stream
    outbox.put("ready")
    while (sent := inbox.get(timeout=TIMEOUT)) is not None:
        sent.wait(gs)
        with torch.cuda.stream(stream):
            total = buffer.to(1, non_blocking=True).sum(dtype=torch.int64)
        synced(stream)
        sent.release()
        outbox.put(int(total))


def open_seeing_only_gpu_1(inbox, outbox) -> None:
    """With only GPU 1 visible, try to wait on a send from GPU 0; report what was raised."""
    import os

    os.environ["CUDA_VISIBLE_DEVICES"] = "1"  # before this process's first CUDA use
    sent = inbox.get(timeout=TIMEOUT)
    try:
        sent.query()
        outbox.put((None, ""))
    except Exception as exc:  # reported to the test
        outbox.put((type(exc).__name__, str(exc)))
