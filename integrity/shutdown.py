"""Asking long-running work to stop: one process-level flag, checked between batches.

A backfill asks ``stop_requested()`` between provider pages. When it answers, the run commits the
bars it holds and ends as failed "worker stopping", resumable from its checkpoint. Two things ask:

- **SIGTERM** to the process, while ``stop_on_sigterm()`` is active (a backfill running in a
  process's main thread: a django-q2 worker, ``manage.py backfill``). The handler only sets the
  flag. Once the run has recorded its outcome, the previous handler is put back and the signal is
  delivered to it, so the process then ends the way it would have — without the half-done state.
- **a django-q2 cluster shutting down.** django-q2 1.11 handles SIGTERM/SIGINT in the ``qcluster``
  main process only (``Cluster.sig_handler``): it sets the cluster's stop event, and its Sentinel
  then waits, without a time limit, for every worker to finish its current task and read a "STOP"
  pill. The workers get no signal (they inherit SIGTERM = default and SIGINT = ignored from the
  Sentinel), so without this a long task keeps the cluster up for up to ``Q_TIMEOUT``. Workers are
  forked from the Sentinel, so the Sentinel object — and its stop event, shared between the
  processes — is on a worker's inherited call stack: ``cluster_stop_event()`` finds it there.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

SIGTERM_REASON = "SIGTERM received"
CLUSTER_REASON = "the task cluster is shutting down"

_requested: str | None = None
_cluster_event: tuple[int, object] | None = None  # (pid, stop event): a forked child looks again


def request_stop(reason: str) -> None:
    """Ask the work running in this process to stop at its next batch boundary."""
    global _requested
    if _requested is None:
        _requested = reason
        logger.warning("stop requested: %s", reason)


def clear_stop_request() -> None:
    """Forget a stop request (a process that carries on after one, and tests)."""
    global _requested
    _requested = None


def stop_requested() -> str | None:
    """Why the work should stop now, or None to carry on."""
    if _requested is not None:
        return _requested
    event = cluster_stop_event()
    if event is not None and event.is_set():
        return CLUSTER_REASON
    return None


def cluster_stop_event():
    """The stop event of the django-q2 cluster this process works for, or None outside a worker."""
    global _cluster_event
    pid = os.getpid()
    if _cluster_event is None or _cluster_event[0] != pid:
        _cluster_event = (pid, _find_cluster_stop_event())
    return _cluster_event[1]


def _find_cluster_stop_event():
    if "django_q.cluster" not in sys.modules:
        return None  # not a qcluster process
    from django_q.cluster import Sentinel

    frame = sys._getframe()
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Sentinel):
            return candidate.stop_event
        frame = frame.f_back
    return None


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """While active, SIGTERM asks the work to stop instead of ending the process mid-batch.

    On exit the previous handler is restored and a SIGTERM received meanwhile is delivered to it.
    Signal handlers belong to the main thread: elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        received.append(signum)
        request_stop(SIGTERM_REASON)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if received:
            # The outcome is recorded: the previous handler decides now (the default ends the
            # process); if it lets the process carry on, so does later work.
            if _requested == SIGTERM_REASON:
                clear_stop_request()
            os.kill(os.getpid(), signal.SIGTERM)
