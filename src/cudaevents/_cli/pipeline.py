"""``cudaevents demo --processes``: a pipeline of processes on one GPU.

A producer process fills device buffers (int32, every element the hand-off's number ``k``)
that consumer processes reach through CUDA IPC memory (PyTorch tensors sent with
``torch.multiprocessing``). Each consumer sums the buffer it is handed on its own GPU stream and
hands the buffer back; the producer refills it only after that. At the end every consumer's
sums must be ``k * elements`` for exactly the hand-offs it was given, in order: a buffer read
before it was filled, or refilled before it was read, shows as a wrong sum.

How a hand-off travels (``mode``):

- ``host``: the baseline. The producer waits on the host for its fill (a CUDA event's
  synchronize) and sends ``k`` to the consumer; the consumer sums,
  synchronizes, and sends ``k`` back.
- ``events``: interprocess events. The producer records a pooled
  ``CudaEvent(interprocess=True)`` after the fill and sends ``event.ipc_handle()`` with ``k``;
  the consumer's stream waits for it on the device, sums, and hands back an event of its own
  the same way, which the producer's stream waits for before it refills the buffer. No host
  waits for the GPU on either side.
- ``counter``: two shared counters per consumer (``AtomicEvent(shared=True)``): the producer's
  stream signals the number of fills done, the consumer's stream waits for it on the device,
  sums, and signals the number of sums done, which the producer's stream waits for before it
  refills a buffer. No message per hand-off at all: the consumer enqueues its waits ahead.

Two figures per mode, measured in one run: the **hand-off latency** in a ping-pong with one
buffer and one consumer (from the producer enqueuing a fill to the producer's host knowing the
consumer has summed it; p50 and p99 over the rounds), and the **throughput** with several
buffers per consumer and all consumers (hand-offs per second over the whole run). Every host
wait for the GPU, in every mode and process, polls as one wait policy says (``"spin"`` unless
told); messages are received blocking, as ``multiprocessing`` does.

A last row times the counter ping-pong between two streams of the producer's own process: the
same work with no second GPU context. Without MPS each process has its own context, and the
GPU switches between them at every hand-off, in every mode; that row shows what the switching
costs. The table says whether an MPS control daemon serves the run.
"""

from __future__ import annotations

import os
import statistics
import time

__all__ = ["run_pipeline", "MODES"]

MODES = ("host", "events", "counter")
TIMEOUT = 120.0  # seconds any process waits for a message before giving up


def _torch():
    import torch
    import torch.multiprocessing as tmp

    return torch, tmp


def _recv(conn, what: str):
    """The next message on ``conn``, waiting at most :data:`TIMEOUT` seconds."""
    if not conn.poll(TIMEOUT):
        raise TimeoutError(f"{what} sent nothing in {TIMEOUT} s")
    return conn.recv()


def _consume(mode: str, device: int, buffers: list, conn, counters, policy) -> None:
    """A consumer process: sum each buffer it is handed on a stream of ``device`` (a buffer of
    another GPU is copied over first), hand it back; at the end send the sums. Its host waits
    for the GPU poll as ``policy`` says."""
    torch, _ = _torch()
    import cudaevents as ce

    torch.cuda.set_device(device)
    stream = torch.cuda.Stream(device)
    gs = ce.as_stream(stream)
    sums, ks = [], []

    def add(buf, k: int) -> None:
        if buf.device.index != device:  # a peer copy, ordered after the stream's wait by torch
            buf = buf.to(device, non_blocking=True)
        sums.append(buf.sum(dtype=torch.int64))
        ks.append(k)

    # CUDA loads kernels lazily and a first launch can synchronize the context: load the sum's
    # now, not behind the stream's first device wait
    torch.zeros(1, dtype=torch.int32, device=device).sum(dtype=torch.int64)
    with torch.cuda.stream(stream):
        if mode == "counter":  # no messages: the plan, then only the counters
            ready, free = counters
            for j, k in enumerate(_recv(conn, "the producer"), 1):
                ready.wait(j, gs)  # on the device: the j-th fill is done
                add(buffers[(j - 1) % len(buffers)], k)
                free.signal(j, gs)  # the buffer may be filled again
        while mode != "counter" and (msg := _recv(conn, "the producer")) is not None:
            k, slot, sent = msg
            if mode == "events":
                sent.wait(gs)  # on the device: the fill is done before the sum runs
                sent.release()
            add(buffers[slot], k)
            if mode == "events":
                back = ce.CudaEvent(device, interprocess=True).record(gs)
                conn.send((k, slot, back.ipc_handle()))
                back.close()  # held by the send until the producer releases it
            else:
                gs.synchronize(timeout=TIMEOUT, policy=policy)
                conn.send((k, slot, None))
        gs.synchronize(timeout=TIMEOUT)
    conn.send(("sums", ks, [int(s) for s in torch.stack(sums).cpu()] if sums else []))


class _Producer:
    """The producing side of one run: buffers per consumer, their pipes, and the hand-offs."""

    def __init__(self, mode: str, plan: list[list[int]], buffers: int, elements: int, device: int,
                 consumer_device: int, policy):
        torch, tmp = _torch()
        import cudaevents as ce

        self.torch, self.ce, self.mode, self.device, self.policy = torch, ce, mode, device, policy
        self.elements = elements
        ctx = tmp.get_context("spawn")
        self.stream = torch.cuda.Stream(device)
        self.gs = ce.as_stream(self.stream)
        consumers = len(plan)
        self.buffers = [[torch.zeros(elements, dtype=torch.int32, device=device) for _ in range(buffers)]
                        for _ in range(consumers)]
        # counter mode: per consumer, fills done (ready) and sums done (free), counted per hand-off
        self.counters = [(ce.AtomicEvent(device, shared=True), ce.AtomicEvent(device, shared=True))
                         if mode == "counter" else None for _ in range(consumers)]
        ce.as_stream(torch.cuda.current_stream(device)).synchronize(timeout=TIMEOUT)  # zeroed before others see them
        pipes = [ctx.Pipe() for _ in range(consumers)]
        self.conns = [mine for mine, _ in pipes]
        self.procs = [ctx.Process(target=_consume, args=(mode, consumer_device, self.buffers[c], pipes[c][1],
                                                         self.counters[c], policy), daemon=True)
                      for c in range(consumers)]
        for p in self.procs:
            p.start()
        if mode == "counter":
            for conn, ks in zip(self.conns, plan):
                conn.send(ks)
        self.sent = [0] * consumers  # hand-offs to each consumer so far
        self.free: list[dict] = [{} for _ in range(consumers)]  # slot -> the consumer's hand-back
        self.owed = [0] * consumers  # hand-offs a consumer has not handed back yet

    def _back(self, c: int, block: bool):
        """Take one hand-back ``(k, slot, event or None)`` of consumer ``c``; without ``block``,
        ``None`` when there is none yet."""
        if not block and not self.conns[c].poll():
            return None
        k, slot, back = _recv(self.conns[c], f"consumer {c}")
        self.owed[c] -= 1
        self.free[c][slot] = back
        return k, slot, back

    def hand_off(self, k: int, c: int, slot: int, buffers: int) -> None:
        """Fill consumer ``c``'s buffer ``slot`` with ``k`` once it is free, and hand it over.
        Slots go round-robin and come back in order, so with fewer than ``buffers`` owed this
        one is back."""
        j = self.sent[c] = self.sent[c] + 1
        with self.torch.cuda.stream(self.stream):
            if self.mode == "counter":
                ready, free = self.counters[c]
                if j > buffers:
                    free.wait(j - buffers, self.gs)  # on the device: the last sum of this buffer is done
                self.buffers[c][slot].fill_(k)
                ready.signal(j, self.gs)
                return
            while self.owed[c] and self._back(c, block=self.owed[c] >= buffers) is not None:
                pass
            back = self.free[c].pop(slot, None)
            if back is not None:
                back.wait(self.gs)  # the consumer's sum of the last hand-off is done
                back.release()
            self.buffers[c][slot].fill_(k)
            if self.mode == "events":
                event = self.ce.CudaEvent(self.device, interprocess=True).record(self.gs)
                self.conns[c].send((k, slot, event.ipc_handle()))
                event.close()  # held by the send until the consumer releases it
            else:
                self.gs.synchronize(timeout=TIMEOUT, policy=self.policy)
                self.conns[c].send((k, slot, None))
        self.owed[c] += 1

    def summed(self, c: int) -> None:
        """Wait on the host until consumer ``c`` has summed the last buffer handed to it."""
        if self.mode == "counter":
            self.counters[c][1].wait(self.sent[c], timeout=TIMEOUT, policy=self.policy)
            return
        back = self._back(c, block=True)[2]
        if back is not None:
            back.synchronize(timeout=TIMEOUT, policy=self.policy)

    def finish(self) -> list[tuple[list, list]]:
        """Collect every hand-back, stop the consumers, and return each one's (ks, sums)."""
        for c in range(len(self.procs)):
            while self.owed[c]:
                self._back(c, block=True)
            if self.mode != "counter":
                self.conns[c].send(None)
        out = []
        for c, p in enumerate(self.procs):
            msg = _recv(self.conns[c], f"consumer {c}")
            assert msg[0] == "sums", msg
            out.append((msg[1], msg[2]))
            p.join(TIMEOUT)
        for free in self.free:
            for back in free.values():
                if back is not None:
                    back.release()
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
        for pair in self.counters:
            for counter in pair or ():
                counter.close()


def _check(results: list, handed: list[list[int]], elements: int) -> None:
    for c, ((ks, sums), expected) in enumerate(zip(results, handed)):
        if ks != expected:
            raise AssertionError(f"consumer {c} got hand-offs {ks[:8]}... instead of {expected[:8]}...")
        wrong = [(k, s) for k, s in zip(ks, sums) if s != k * elements]
        if wrong:
            raise AssertionError(f"consumer {c}: {len(wrong)} buffers read with the wrong contents, first "
                                 f"(hand-off, sum) {wrong[0]}, expected {wrong[0][0] * elements}")


def _run(mode: str, consumers: int, buffers: int, handoffs: int, elements: int, device: int,
         latencies: bool, consumer_device: int | None = None, policy="spin") -> dict:
    """One run: ``handoffs`` hand-offs round-robin over ``consumers`` (computing on
    ``consumer_device``, by default the producer's); verified; timed."""
    plan = [[k for k in range(1, handoffs + 1) if k % consumers == c] for c in range(consumers)]
    producer = _Producer(mode, plan, buffers, elements, device,
                         device if consumer_device is None else consumer_device, policy)
    try:
        slots = [0] * consumers
        rounds = []
        warm = min(20, handoffs // 5)
        start = None
        for k in range(1, handoffs + 1):
            if k == warm + 1:
                producer.gs.synchronize(timeout=TIMEOUT)  # the warm-up's hand-offs are done
                start = time.perf_counter()
            c = k % consumers
            t0 = time.perf_counter()
            producer.hand_off(k, c, slots[c], buffers)
            slots[c] = (slots[c] + 1) % buffers
            if latencies:  # ping-pong: the producer's host waits to know the consumer is done
                producer.summed(c)
                if k > warm:
                    rounds.append(time.perf_counter() - t0)
        results = producer.finish()
        seconds = time.perf_counter() - start
        _check(results, plan, elements)
    finally:
        producer.close()
    out = {"mode": mode, "consumers": consumers, "buffers": buffers, "handoffs": handoffs,
           "throughput_per_s": (handoffs - warm) / seconds}
    if rounds:
        out.update(_percentiles(rounds))
    return out


def _percentiles(rounds: list[float]) -> dict:
    rounds = sorted(rounds)
    return {"latency_us_p50": statistics.median(rounds) * 1e6,
            "latency_us_p99": rounds[min(len(rounds) - 1, int(0.99 * len(rounds)))] * 1e6}


def _one_process(rounds: int, elements: int, device: int, policy) -> dict:
    """The counter ping-pong between two streams of this process, with the same fill and sum:
    a hand-off with no other process's context on the GPU, the floor of the modes above."""
    torch, _ = _torch()
    import cudaevents as ce

    streams = [torch.cuda.Stream(device) for _ in range(2)]
    producer, consumer = (ce.as_stream(s) for s in streams)
    buf = torch.zeros(elements, dtype=torch.int32, device=device)
    # CUDA loads kernels lazily, and a first launch can synchronize the context: here behind the
    # consumer's device wait, which only this thread's next signal lets go (a deadlock)
    buf.fill_(0).sum(dtype=torch.int64)
    ce.as_stream(torch.cuda.current_stream(device)).synchronize(timeout=TIMEOUT)
    ready, free = ce.AtomicEvent(device), ce.AtomicEvent(device)
    sums, times = [], []
    warm = min(20, rounds // 5)
    try:
        for j in range(1, rounds + 1):
            with torch.cuda.stream(streams[1]):  # the consumer's part, enqueued ahead as in counter mode
                ready.wait(j, consumer)
                sums.append(buf.sum(dtype=torch.int64))
                free.signal(j, consumer)
            t0 = time.perf_counter()
            with torch.cuda.stream(streams[0]):
                buf.fill_(j)
                ready.signal(j, producer)
            free.wait(j, timeout=TIMEOUT, policy=policy)
            if j > warm:
                times.append(time.perf_counter() - t0)
        got = [int(x) for x in torch.stack(sums).cpu()]
    finally:
        ready.close()
        free.close()
    _check([(list(range(1, rounds + 1)), got)], [list(range(1, rounds + 1))], elements)
    return _percentiles(times)


def _mps_pipe() -> str | None:
    """The pipe folder of a running MPS control daemon this process would use, or ``None``
    (no ``control`` pipe there: the processes get a GPU context each and the GPU switches
    between them)."""
    folder = os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps")
    return folder if os.path.exists(os.path.join(folder, "control")) else None


def run_pipeline(out=print, *, handoffs: int = 1000, consumers: int = 2, buffers: int = 4,
                 elements: int = 1 << 18, device: int = 0, modes=MODES, policy="spin") -> dict:
    """Run the pipeline in every mode (latency ping-pong, then throughput), verify every
    buffer, write a table with ``out``, and return the figures by mode (see the module
    docstring). Every host wait for the GPU, in every mode, polls as ``policy`` says (a
    :class:`~cudaevents.WaitPolicy` or a preset; ``"spin"``: what a latency-bound pipeline
    does). Needs PyTorch and a CUDA GPU."""
    report: dict = {"elements": elements, "consumers": consumers, "buffers": buffers, "mps": _mps_pipe(),
                    "modes": {}}
    for mode in modes:
        lat = _run(mode, 1, 1, max(handoffs // 2, 50), elements, device, latencies=True, policy=policy)
        thr = _run(mode, consumers, buffers, handoffs, elements, device, latencies=False, policy=policy)
        report["modes"][mode] = {"latency_us_p50": lat["latency_us_p50"], "latency_us_p99": lat["latency_us_p99"],
                                 "throughput_per_s": thr["throughput_per_s"]}
    report["one_process"] = _one_process(max(handoffs // 2, 50), elements, device, policy)
    base = report["modes"].get("host")
    out(f"{consumers} consumer process(es), {buffers} buffers each of {elements * 4 // 1024} KiB, "
        f"{handoffs} hand-offs per throughput run; every buffer verified; host waits: {policy}")
    out(f"MPS: on ({report['mps']})" if report["mps"] else
        "MPS: off (each process has its own GPU context, and the GPU switches between them at every hand-off; "
        "`nvidia-cuda-mps-control -d` before the run shares one)")
    out(f"{'mode':10} {'latency p50 us':>15} {'p99 us':>10} {'lower x host':>13} {'hand-offs/s':>12} "
        f"{'x host':>8}")
    rows = list(report["modes"].items()) + [("1 process", report["one_process"])]
    for mode, m in rows:
        lower = f"{base['latency_us_p50'] / m['latency_us_p50']:.2f}" if base else "-"
        faster = f"{m['throughput_per_s'] / base['throughput_per_s']:.2f}" if base and "throughput_per_s" in m else "-"
        hps = f"{m['throughput_per_s']:12.0f}" if "throughput_per_s" in m else f"{'-':>12}"
        out(f"{mode:10} {m['latency_us_p50']:15.1f} {m['latency_us_p99']:10.1f} {lower:>13} {hps} {faster:>8}")
    out("1 process: the counter ping-pong between two streams of the producer's process (no context switch), "
        "the floor of the modes above")
    return report
