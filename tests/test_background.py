"""The run's reporter thread: order, context, failures that never break a run."""

from __future__ import annotations

import contextvars
import logging
import threading
import time

import pytest

from blockbuster.tasks import Reporter

VAR = contextvars.ContextVar("VAR", default="unset")


@pytest.fixture(autouse=True, scope="module")
def _session_server(prefect_harness):
    """Prefect path: the session's server. A Reporter's first call starts Prefect's
    events worker, which opens an API client: with no API configured, that started a
    temporary server on a fresh database in the test process (~25 CPU s alone, and at
    the lowest versions it outlived its xdist worker). Nothing here tests that path;
    the harness is the one every xdist worker starts for its flow tests anyway."""


def test_calls_run_in_order_off_the_callers_thread_in_its_context():
    r = Reporter()
    seen = []
    gate = threading.Event()
    VAR.set("flow")

    def slow(i):
        # the first call holds the thread until every call has been submitted: a submit
        # that waited for its call would leave the gate closed here (after 5 s)
        opened = gate.wait(5) if i == 0 else gate.is_set()
        time.sleep(0.01 * (3 - i))  # earlier calls are slower: order must still hold
        on_main = threading.current_thread() is threading.main_thread()
        seen.append((i, VAR.get(), on_main, opened))

    for i in range(3):
        r.submit(slow, i)
    assert seen == []  # nothing ran yet: the first call waits for the gate
    gate.set()
    r.flush()
    assert seen == [(0, "flow", False, True), (1, "flow", False, True), (2, "flow", False, True)]


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
    gate, done = threading.Event(), threading.Event()
    opened = []
    r.submit(lambda: opened.append(gate.wait(5)))
    r.submit(done.set)
    r.close(wait=False)  # returns while the first call still waits for the gate
    assert opened == [] and not done.is_set()
    gate.set()
    assert done.wait(5)
    assert opened == [True]  # the gate was opened after close returned


def test_flush_without_calls_and_twice_and_submit_after_flush():
    r = Reporter()
    got = []
    r.flush()  # nothing submitted: returns, and the reporter stays usable
    r.submit(got.append, 1)
    r.flush()
    assert got == [1]
    r.flush()  # twice: nothing left, nothing run again
    assert got == [1]
    r.submit(got.append, 2)  # a flushed reporter starts a new thread for new calls
    r.close(wait=True)
    assert got == [1, 2]


def test_next_run_waits_for_the_last_reports_of_a_closed_reporter():
    """close(wait=False) returns at once; wait_for_closed() (called before the next
    run's flow run is created) returns only when those calls have been sent."""
    from blockbuster.tasks import wait_for_closed

    r = Reporter()
    release = threading.Event()
    sent = []
    r.submit(lambda: (release.wait(5), sent.append("summary")))
    r.close(wait=False)
    assert sent == []  # returned while the call still waits for its release
    threading.Timer(0.2, release.set).start()
    wait_for_closed(timeout=5)
    assert sent == ["summary"]
    wait_for_closed(timeout=5)  # nothing left: returns at once


def test_a_run_on_the_temporary_server_sends_it_no_logs_and_no_heartbeats(monkeypatch):
    """Against Prefect's temporary server (no API URL), a run's logs go to the console
    only and it sends no heartbeats; against a configured server both stay as they
    are, and so does a user's own PREFECT_LOGGING_TO_API_ENABLED. A client keeps asking
    for CSRF tokens unless blockbuster started the temporary server and it said it wants
    none (tests/test_script.py runs both cases on a real temporary server)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from blockbuster.tasks import ephemeral_run_settings

    monkeypatch.delenv("PREFECT_LOGGING_TO_API_ENABLED", raising=False)
    with temporary_settings({PREFECT_API_URL: None}):
        assert get_current_settings().logging.to_api.enabled
        with ephemeral_run_settings():
            assert not get_current_settings().logging.to_api.enabled
            assert get_current_settings().flows.heartbeat_frequency is None
            # no temporary server started here: nothing known of its CSRF protection
            assert get_current_settings().client.csrf_support_enabled
        assert get_current_settings().logging.to_api.enabled  # outside, as it was
        monkeypatch.setenv("PREFECT_LOGGING_TO_API_ENABLED", "true")  # the user's
        with ephemeral_run_settings():
            assert get_current_settings().logging.to_api.enabled
    monkeypatch.delenv("PREFECT_LOGGING_TO_API_ENABLED")
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:4200/api"}):
        with ephemeral_run_settings():
            assert get_current_settings().logging.to_api.enabled
            assert get_current_settings().client.csrf_support_enabled


def test_whether_a_server_wants_csrf_tokens_is_its_own_answer():
    """blockbuster asks a temporary server it started whether it wants CSRF tokens
    (once): a real server without CSRF protection (the session's) says no; where no
    answer comes, the answer is yes (a client that asks for a token it does not need
    costs a request; one that does not ask where it must is refused)."""
    from prefect.settings import PREFECT_API_URL

    from blockbuster.tasks._prefect_compat import _asks_for_csrf_tokens

    assert _asks_for_csrf_tokens(PREFECT_API_URL.value()) is False
    assert _asks_for_csrf_tokens("http://127.0.0.1:9/api") is True  # nothing listens


def test_the_temporary_server_is_started_without_services_for_nobody(monkeypatch):
    """Prefect's temporary server (no UI, gone at exit) is started without the event
    persister and the triggers (their writes to its SQLite database met a new flow
    run's, which was answered 503 and retried 2 s later) and without the task run
    recorder (a third of its CPU in a warm call). Its process takes its settings from
    the current ones; a user's own setting is kept."""
    from prefect.settings import get_current_settings

    from blockbuster.tasks._prefect_compat import _IDLE_SERVICES, _temporary_server_settings

    for aliases in _IDLE_SERVICES.values():
        for name in aliases:
            monkeypatch.delenv(name, raising=False)
    with _temporary_server_settings():
        env = get_current_settings().to_environment_variables(exclude_unset=True)
    assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] == "False"
    assert env["PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED"] == "False"
    assert env["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED"] == "False"
    monkeypatch.setenv("PREFECT_API_SERVICES_TRIGGERS_ENABLED", "true")  # the user's
    with _temporary_server_settings():
        env = get_current_settings().to_environment_variables(exclude_unset=True)
    assert env["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED"] == "False"
    assert env.get("PREFECT_SERVER_SERVICES_TRIGGERS_ENABLED") != "False"
    # outside, nothing changed
    env = get_current_settings().to_environment_variables(exclude_unset=True)
    assert "PREFECT_SERVER_SERVICES_EVENT_PERSISTER_ENABLED" not in env
