"""Benchmark helper: load from several client processes at once.

Python threads share one interpreter lock: eight threads framing IMAP replies are one
core at most, and on a 2-core machine a client that cannot keep up measures itself. Each
client here is a forked process; they start together (a shared event), each runs its
part (a number of rounds, or until a deadline), and the parent collects what each did:
operations counted, errors (the first one's text kept), when it finished.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import queue
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

# One client's work: (client index, rounds or None, deadline on time.monotonic() or None)
# -> operations done, or (operations, errors, first error's text) for a client that goes
# on after an error; an exception stops the client and counts as one error.
Work = Callable[[int, int | None, float | None], "int | tuple[int, int, str | None]"]


@dataclass
class LoadResult:
    operations: int
    errors: int
    elapsed: float
    first_error: str | None

    @property
    def rate(self) -> float:
        return self.operations / self.elapsed if self.elapsed else 0.0


def _client(
    work: Work,
    index: int,
    rounds: int | None,
    seconds: float | None,
    ready: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[tuple[int, int, str | None, float]],
) -> None:
    ready.wait()
    began = time.monotonic()
    deadline = began + seconds if seconds is not None else None
    try:
        done = work(index, rounds, deadline)
        if isinstance(done, tuple):
            results.put((*done, time.monotonic()))
        else:
            results.put((done, 0, None, time.monotonic()))
    except BaseException as exc:  # counted and reported by the parent
        text = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        results.put((getattr(exc, "operations", 0), 1, text, time.monotonic()))


def run_clients(
    work: Work, clients: int, *, rounds: list[int] | None = None, seconds: float | None = None
) -> LoadResult:
    """`clients` processes running `work` at once, client i for ``rounds[i]`` rounds or for
    `seconds`; the elapsed time runs from their common start to the last one's end."""
    context = multiprocessing.get_context("fork")
    ready = context.Barrier(clients + 1)
    results: multiprocessing.queues.Queue[tuple[int, int, str | None, float]] = context.Queue()
    processes = [
        context.Process(
            target=_client,
            args=(work, i, rounds[i] if rounds else None, seconds, ready, results),
            daemon=True,
        )
        for i in range(clients)
    ]
    for process in processes:
        process.start()
    ready.wait()
    began = time.monotonic()
    collected: list[tuple[int, int, str | None, float]] = []
    while len(collected) < clients:
        try:
            collected.append(results.get(timeout=1))
        except queue.Empty:  # a client killed before it could report must not hang us
            dead = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a client process died (exit {dead[0]})") from None
    for process in processes:
        process.join()
    first = next((text for _, _, text, _ in collected if text), None)
    return LoadResult(
        operations=sum(done for done, _, _, _ in collected),
        errors=sum(errors for _, errors, _, _ in collected),
        elapsed=max(end for *_, end in collected) - began,
        first_error=first,
    )


def shares(total: int, clients: int) -> list[int]:
    """`total` rounds spread over `clients` as evenly as can be."""
    return [total // clients + (1 if i < total % clients else 0) for i in range(clients)]
