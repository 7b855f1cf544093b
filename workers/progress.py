"""Progress from inside a Ray worker back to the driver, through a Ray queue.

The worker puts small dicts on the queue (``{"total": N, "unit": U}``, then
``{"n": k, ...}`` per unit of work); a driver thread hands them to a callback
(a progress bar) while the driver waits for the worker's result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Report = Callable[[dict[str, Any]], None]


def run_with_progress(call: Callable[[Any], T], on_message: Report | None) -> T:
    """``call(queue)`` with a fresh queue (None when ``on_message`` is None); messages go to ``on_message``.

    The queue's actor takes no CPU, so it fits beside engines and trainers
    that use every CPU of the cluster.
    """
    if on_message is None:
        return call(None)
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    stop = threading.Event()

    def pump() -> None:
        while True:
            try:
                msg = queue.get(timeout=0.2)
            except Empty:
                if stop.is_set():
                    return
                continue
            on_message(msg)

    thread = threading.Thread(target=pump, name="progress", daemon=True)
    thread.start()
    try:
        return call(queue)
    finally:
        stop.set()
        thread.join(timeout=10)
        queue.shutdown()


def reporter(queue: Any) -> Report:
    """The worker side: a function that puts a message on ``queue`` (a no-op without one)."""
    if queue is None:
        return lambda msg: None
    return lambda msg: queue.put(msg)
