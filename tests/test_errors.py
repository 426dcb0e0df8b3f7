"""Errors and resilience: the error tree, retry_on_failure, CircuitBreaker, error_context."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time

import pytest

from amulet_lab.errors import (
    AmuletError,
    CircuitBreaker,
    CircuitOpenError,
    ModelError,
    NetworkError,
    ProcessingError,
    SecurityError,
    ValidationError,
    error_context,
    is_testing,
    retry_on_failure,
    set_testing,
)
from amulet_lab.errors._retry import RetryPolicy


class Clock:
    """A hand-driven clock so breaker tests never sleep."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# ---- the error tree ---------------------------------------------------------------------
def test_error_fields_and_to_dict_keep_cause():
    try:
        try:
            raise OSError("disk gone")
        except OSError as cause:
            raise ProcessingError("decode failed", stage="decode", context={"file": "a.jpg"}) from cause
    except ProcessingError as exc:
        err = exc
    assert err.code == "E_PROCESSING" and err.stage == "decode" and not err.retryable
    data = err.to_dict()
    assert data["context"] == {"file": "a.jpg", "stage": "decode"}
    assert data["cause"] == "OSError: disk gone"
    assert isinstance(err.__cause__, OSError)
    json.dumps(data)  # structured responses must serialise


def test_subclass_defaults():
    assert NetworkError("x").retryable is True
    assert ValidationError("x", field="f", value=3).context == {"field": "f", "value": 3}
    assert SecurityError("x", severity="high").severity == "high"
    assert ModelError("x").code == "E_MODEL"
    assert AmuletError("x", code="E_CUSTOM").code == "E_CUSTOM"
    assert isinstance(ValidationError("x"), ValueError)  # callers catching ValueError still work


# ---- retry ------------------------------------------------------------------------------
def make_flaky(exc_factory, failures):
    calls = {"n": 0}

    def fn():
        calls["n"] += 1
        if calls["n"] <= failures:
            raise exc_factory()
        return "ok"

    return fn, calls


def test_validation_error_is_tried_exactly_once():
    fn, calls = make_flaky(lambda: ValidationError("bad input"), failures=10)
    with pytest.raises(ValidationError) as info:
        retry_on_failure(max_retries=3)(fn)()
    assert calls["n"] == 1
    assert info.value.attempts == 1


def test_network_error_is_tried_max_retries_plus_one_and_original_type_raised():
    fn, calls = make_flaky(lambda: NetworkError("down"), failures=10)
    wrapped = retry_on_failure(max_retries=3, delay=5.0)(fn)
    with pytest.raises(NetworkError) as info:
        wrapped()
    assert calls["n"] == 4
    assert info.value.attempts == 4 and info.value.elapsed_s >= 0
    assert info.value.context["attempts"] == 4


def test_transient_failure_then_success():
    fn, calls = make_flaky(lambda: ConnectionError("reset"), failures=2)
    assert retry_on_failure(max_retries=3)(fn)() == "ok"
    assert calls["n"] == 3


def test_retry_on_names_extra_kinds_and_plain_errors_are_not_retried():
    fn, calls = make_flaky(lambda: KeyError("k"), failures=1)
    assert retry_on_failure(max_retries=2, retry_on=KeyError)(fn)() == "ok"
    fn2, calls2 = make_flaky(lambda: KeyError("k"), failures=1)
    with pytest.raises(KeyError):
        retry_on_failure(max_retries=2)(fn2)()
    assert calls2["n"] == 1


def test_retryable_amulet_error_is_retried():
    fn, calls = make_flaky(lambda: ProcessingError("busy", retryable=True), failures=1)
    assert retry_on_failure(max_retries=1)(fn)() == "ok"


def test_async_retry_matches_sync():
    calls = {"n": 0}

    @retry_on_failure(max_retries=2)
    async def fetch():
        """Fetch something."""
        calls["n"] += 1
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError) as info:
        asyncio.run(fetch())
    assert calls["n"] == 3 and info.value.attempts == 3
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch something."

    calls["v"] = 0

    @retry_on_failure(max_retries=2)
    async def validate():
        calls["v"] += 1
        raise ValidationError("no")

    with pytest.raises(ValidationError):
        asyncio.run(validate())
    assert calls["v"] == 1


def test_waits_are_bounded_jittered_and_zero_in_testing():
    policy = RetryPolicy(max_retries=10, delay=1.0, backoff=2.0, max_delay=5.0, jitter=True)
    set_testing(False)
    try:
        waits = [policy.wait(a) for a in range(1, 10)]
    finally:
        set_testing(True)
    assert all(0 < w <= 5.0 for w in waits)
    assert waits[0] <= 1.0 and max(waits) > 2.5  # grows, then capped
    assert is_testing() and policy.wait(5) == 0.0


def test_bad_retry_arguments_are_refused():
    with pytest.raises(ValidationError):
        retry_on_failure(max_retries=-1)
    with pytest.raises(ValidationError):
        retry_on_failure(backoff=0.5)


# ---- circuit breaker --------------------------------------------------------------------
def fail():
    raise NetworkError("down")


def ok():
    return 42


def test_breaker_opens_fails_fast_half_opens_and_closes():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=3, timeout=60, timer=clock, name="dep")
    for _ in range(3):
        with pytest.raises(NetworkError):
            breaker.call(fail)
    assert breaker.state == "open"
    calls = {"n": 0}

    def counted():
        calls["n"] += 1

    with pytest.raises(CircuitOpenError) as info:
        breaker.call(counted)
    assert calls["n"] == 0  # failed fast, the dependency was not called
    assert 59 < info.value.retry_after_s <= 60
    clock.now += 61
    assert breaker.state == "half_open"
    assert breaker.call(ok) == 42
    assert breaker.state == "closed"
    kinds = [(t["from"], t["to"]) for t in breaker.stats()["transitions"]]
    assert kinds == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]


def test_breaker_reopens_when_a_probe_fails_and_needs_all_probes():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, timeout=10, half_open_probes=2, timer=clock)
    with pytest.raises(NetworkError):
        breaker.call(fail)
    clock.now += 10
    assert breaker.call(ok) == 42
    assert breaker.state == "half_open"  # one of two probes done
    with pytest.raises(NetworkError):
        breaker.call(fail)
    assert breaker.state == "open"
    clock.now += 10
    breaker.call(ok)
    breaker.call(ok)
    assert breaker.state == "closed"


def test_breaker_rate_rule():
    breaker = CircuitBreaker(failure_threshold=100, failure_rate=0.5, window=10, min_calls=6, timer=Clock())
    pattern = [ok, fail, ok, fail, ok]  # 2 of 5 failures, below min_calls anyway
    for fn in pattern:
        try:
            breaker.call(fn)
        except NetworkError:
            pass
    assert breaker.state == "closed"
    with pytest.raises(NetworkError):
        breaker.call(fail)  # 3 of 6 = 50 %
    assert breaker.state == "open"


def test_breaker_ignores_validation_errors_by_default():
    breaker = CircuitBreaker(failure_threshold=1, timer=Clock())

    def bad_input():
        raise ValidationError("caller's mistake")

    for _ in range(5):
        with pytest.raises(ValidationError):
            breaker.call(bad_input)
    assert breaker.state == "closed" and breaker.stats()["ignored"] == 5


def test_breaker_counts_only_the_kinds_it_is_told():
    breaker = CircuitBreaker(failure_threshold=1, count=(NetworkError,), timer=Clock())
    with pytest.raises(KeyError):
        breaker.call(lambda: {}["x"])
    assert breaker.state == "closed"


def test_breaker_decorates_async_functions():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, timeout=5, timer=clock)

    @breaker
    async def remote(fail_it: bool):
        if fail_it:
            raise ConnectionError("refused")
        return "pong"

    async def scenario():
        for _ in range(2):
            with pytest.raises(ConnectionError):
                await remote(True)
        with pytest.raises(CircuitOpenError):
            await remote(False)
        clock.now += 5
        return await remote(False)

    assert asyncio.run(scenario()) == "pong"
    assert breaker.state == "closed"


def test_eight_threads_hammering_one_breaker_leave_consistent_counts():
    breaker = CircuitBreaker(failure_threshold=10**9, timer=Clock())
    per_thread = 2000

    def work(i):
        for n in range(per_thread):
            try:
                breaker.call(fail if (n + i) % 3 == 0 else ok)
            except NetworkError:
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = breaker.stats()
    assert stats["calls"] == 8 * per_thread
    assert stats["successes"] + stats["failures"] == 8 * per_thread
    expected_failures = sum(1 for i in range(8) for n in range(per_thread) if (n + i) % 3 == 0)
    assert stats["failures"] == expected_failures


# ---- error_context ----------------------------------------------------------------------
def test_error_context_logs_once_and_reraises_unchanged(caplog):
    caplog.set_level(logging.ERROR, logger="amulet_lab")
    err = ProcessingError("boom", stage="infer")
    with pytest.raises(ProcessingError) as info:
        with error_context("outer", user_id="123"):
            with error_context("inner", image="a.jpg"):
                raise err
    assert info.value is err
    records = [r for r in caplog.records if r.name == "amulet_lab.errors"]
    assert len(records) == 1
    assert records[0].operation == "inner" and records[0].context == {"image": "a.jpg"}
    assert err.context["operation"] == "inner" and err.context["user_id"] == "123"


def test_error_context_async_and_success_is_silent(caplog):
    caplog.set_level(logging.ERROR, logger="amulet_lab")

    async def run():
        async with error_context("fine"):
            await asyncio.sleep(0)
        async with error_context("broken"):
            raise KeyError("missing")

    with pytest.raises(KeyError):
        asyncio.run(run())
    ops = [r.operation for r in caplog.records if r.name == "amulet_lab.errors"]
    assert ops == ["broken"]


def test_late_outcome_of_an_old_call_cannot_close_a_half_open_circuit():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, timeout=10, timer=clock)
    slow_epoch = breaker._before()  # a slow call admitted while closed
    with pytest.raises(NetworkError):
        breaker.call(fail)  # another call fails: open
    clock.now += 10
    probe_epoch = breaker._before()  # a probe is admitted (half-open)
    breaker._after(None, slow_epoch)  # the slow call finally succeeds
    assert breaker.state == "half_open"  # it must not close the circuit for the probe
    breaker._after(None, probe_epoch)
    assert breaker.state == "closed"


# ---- audit additions: argument checks, sync decorators, timestamps, durations ----------
def test_sync_retry_keeps_name_doc_and_tries_network_errors_max_retries_plus_one():
    calls = {"n": 0}

    @retry_on_failure(max_retries=2)
    def fetch():
        """Fetch synchronously."""
        calls["n"] += 1
        raise NetworkError("down")

    with pytest.raises(NetworkError) as info:
        fetch()
    assert calls["n"] == 3 and info.value.attempts == 3
    assert fetch.__name__ == "fetch" and fetch.__doc__ == "Fetch synchronously."
    assert fetch.__wrapped__ is not None


def test_retry_on_a_builtin_base_does_not_retry_a_validation_error():
    fn, calls = make_flaky(lambda: ValidationError("bad input"), failures=10)
    with pytest.raises(ValidationError):
        retry_on_failure(max_retries=3, retry_on=ValueError)(fn)()
    assert calls["n"] == 1  # ValidationError is a ValueError, but the caller's mistake never heals
    fn2, calls2 = make_flaky(lambda: ValueError("flaky parser"), failures=1)
    assert retry_on_failure(max_retries=3, retry_on=ValueError)(fn2)() == "ok" and calls2["n"] == 2
    fn3, calls3 = make_flaky(lambda: ProcessingError("busy"), failures=1)
    assert retry_on_failure(max_retries=3, retry_on=ProcessingError)(fn3)() == "ok" and calls3["n"] == 2


@pytest.mark.parametrize(
    "kwargs",
    [{"max_retries": "3"}, {"max_retries": 2.5}, {"delay": float("nan")}, {"max_delay": float("inf")},
     {"retry_on": "KeyError"}, {"retry_on": (KeyError, 3)}],
)
def test_retry_arguments_of_the_wrong_type_are_refused(kwargs):
    with pytest.raises(ValidationError):
        retry_on_failure(**kwargs)


def test_retry_refuses_to_decorate_a_non_callable_and_bare_use():
    with pytest.raises(ValidationError):
        retry_on_failure()(42)
    with pytest.raises(ValidationError):

        @retry_on_failure  # forgot the parentheses: max_retries would be the function
        def f():
            return 1


def test_breaker_decorates_sync_functions_and_stats_count_everything():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, timeout=5, timer=clock, name="sync")

    @breaker
    def remote(fail_it: bool):
        """Call the remote."""
        if fail_it:
            raise ConnectionError("refused")
        return "pong"

    assert remote.__name__ == "remote" and remote.__doc__ == "Call the remote."
    assert remote(False) == "pong"
    for _ in range(2):
        with pytest.raises(ConnectionError):
            remote(True)
    with pytest.raises(CircuitOpenError) as info:
        remote(False)
    assert "next try in" in str(info.value) and info.value.code == "E_CIRCUIT_OPEN"
    stats = breaker.stats()
    assert (stats["state"], stats["calls"], stats["successes"], stats["failures"], stats["rejected"]) == (
        "open", 4, 1, 2, 1)
    (change,) = stats["transitions"]
    assert change["from"] == "closed" and change["to"] == "open" and isinstance(change["at"], float)
    assert abs(change["at"] - time.time()) < 60 and "consecutive" in change["reason"]


@pytest.mark.parametrize(
    "kwargs",
    [{"failure_threshold": 0}, {"failure_threshold": "5"}, {"timeout": -1}, {"timeout": float("nan")},
     {"half_open_probes": 0}, {"failure_rate": 0}, {"failure_rate": 1.5},
     {"failure_rate": 0.5, "window": 5, "min_calls": 10},  # the rate rule could never fire
     {"count": "NetworkError"}, {"exclude": (ValidationError, 1)}, {"timer": 5}],
)
def test_breaker_arguments_are_checked(kwargs):
    with pytest.raises(ValidationError):
        CircuitBreaker(**kwargs)


def test_breaker_refuses_to_decorate_a_non_callable():
    with pytest.raises(ValidationError):
        CircuitBreaker()(42)


def test_eight_threads_through_opening_and_closing_keep_counts_and_transitions_consistent():
    breaker = CircuitBreaker(failure_threshold=3, timeout=0.0, half_open_probes=2, max_transitions=10**6)
    per_thread = 1500

    def work(i):
        for n in range(per_thread):
            try:
                breaker.call(fail if (n // 5 + i) % 2 == 0 else ok)  # runs of 5 failures, then 5 successes
            except (NetworkError, CircuitOpenError):
                pass

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a missing lock shows up as a broken chain
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    stats = breaker.stats()
    assert stats["calls"] == 8 * per_thread
    assert stats["successes"] + stats["failures"] + stats["rejected"] + stats["ignored"] == stats["calls"]
    changes = stats["transitions"]
    assert changes, "the breaker never opened"
    assert changes[0]["from"] == "closed"
    for before, after in zip(changes, changes[1:]):
        assert before["to"] == after["from"] and before["at"] <= after["at"]
    assert stats["state"] in ("closed", "open", "half_open")


def test_error_context_logs_duration_and_sync_context_once(caplog):
    caplog.set_level(logging.ERROR, logger="amulet_lab")
    with pytest.raises(KeyError):
        with error_context("lookup", key="k"):
            raise KeyError("k")
    (record,) = [r for r in caplog.records if r.name == "amulet_lab.errors"]
    assert record.operation == "lookup" and record.context == {"key": "k"} and record.duration_s >= 0
    assert record.code == "KeyError" and "lookup failed after" in record.getMessage()


@pytest.mark.parametrize("operation", [None, "", "  ", 3])
def test_error_context_needs_an_operation_name(operation):
    with pytest.raises(ValidationError):
        error_context(operation)
