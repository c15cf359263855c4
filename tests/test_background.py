"""The run's reporter thread: order, context, failures that never break a run."""

from __future__ import annotations

import contextvars
import logging
import threading
import time

from blockbuster.tasks import Reporter

VAR = contextvars.ContextVar("VAR", default="unset")


def test_calls_run_in_order_off_the_callers_thread_in_its_context():
    r = Reporter()
    seen = []
    VAR.set("flow")

    def slow(i):
        time.sleep(0.01 * (3 - i))  # earlier calls are slower: order must still hold
        seen.append((i, VAR.get(), threading.current_thread() is threading.main_thread()))

    t0 = time.perf_counter()
    for i in range(3):
        r.submit(slow, i)
    assert time.perf_counter() - t0 < 0.02  # submitting does not wait
    r.flush()
    assert seen == [(0, "flow", False), (1, "flow", False), (2, "flow", False)]


def test_a_failing_report_is_logged_and_the_rest_still_run(caplog):
    r = Reporter()
    got = []

    def boom():
        raise RuntimeError("API down")

    with caplog.at_level(logging.WARNING, logger="blockbuster"):
        r.submit(boom)
        r.submit(got.append, "after")
        r.flush()
    assert got == ["after"]
    assert "could not publish a report" in caplog.text and "API down" in caplog.text


def test_close_without_waiting_still_runs_what_was_queued():
    r = Reporter()
    done = threading.Event()
    r.submit(time.sleep, 0.05)
    r.submit(done.set)
    t0 = time.perf_counter()
    r.close(wait=False)
    assert time.perf_counter() - t0 < 0.04 and not done.is_set()
    assert done.wait(5)


def test_flush_without_calls_and_twice():
    r = Reporter()
    r.flush()
    r.submit(lambda: None)
    r.flush()
    r.flush()


def test_next_run_waits_for_the_last_reports_of_a_closed_reporter():
    """close(wait=False) returns at once; wait_for_closed() (called before the next
    run's flow run is created) returns only when those calls have been sent."""
    from blockbuster.tasks import wait_for_closed

    r = Reporter()
    release = threading.Event()
    sent = []
    r.submit(lambda: (release.wait(5), sent.append("summary")))
    t0 = time.perf_counter()
    r.close(wait=False)
    assert time.perf_counter() - t0 < 0.5 and sent == []
    threading.Timer(0.2, release.set).start()
    wait_for_closed(timeout=5)
    assert sent == ["summary"]
    wait_for_closed(timeout=5)  # nothing left: returns at once
