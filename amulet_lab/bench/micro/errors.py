"""Overhead of ``retry_on_failure`` and a closed ``CircuitBreaker`` on a call that succeeds first time.

Baselines, timed in the same run: ``tenacity.retry`` (with the same stop rule) and
``pybreaker.CircuitBreaker``. Ratios are (our time per call) / (their time per call),
each minus the bare call's time, so they compare the wrappers' own overhead.
Target: no slower than either (ratio <= 1).
"""

from __future__ import annotations

from amulet_lab.bench.micro import MicroResult, Target, time_per_call
from amulet_lab.errors import CircuitBreaker, NetworkError, retry_on_failure


def _work() -> int:
    return 1


def run(quick: bool = False) -> MicroResult:
    """Time the success path of our retry and breaker against tenacity and pybreaker."""
    import pybreaker
    import tenacity

    number = 2_000 if quick else 100_000
    repeat = 3 if quick else 7

    ours_retry = retry_on_failure(max_retries=3)(_work)
    their_retry = tenacity.retry(
        stop=tenacity.stop_after_attempt(4),
        retry=tenacity.retry_if_exception_type((NetworkError, TimeoutError, ConnectionError)),
        wait=tenacity.wait_exponential(multiplier=1, max=30),
        reraise=True,
    )(_work)
    ours_breaker = CircuitBreaker(failure_threshold=5, timeout=60)(_work)
    their_breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)(_work)

    bare = time_per_call(_work, number=number, repeat=repeat)
    times = {
        "retry_ours_s": time_per_call(ours_retry, number=number, repeat=repeat),
        "retry_tenacity_s": time_per_call(their_retry, number=number, repeat=repeat),
        "breaker_ours_s": time_per_call(ours_breaker, number=number, repeat=repeat),
        "breaker_pybreaker_s": time_per_call(their_breaker, number=number, repeat=repeat),
    }

    def overhead(key: str) -> float:
        return max(times[key] - bare, 1e-12)

    ratios = {
        "retry_vs_tenacity": overhead("retry_ours_s") / overhead("retry_tenacity_s"),
        "breaker_vs_pybreaker": overhead("breaker_ours_s") / overhead("breaker_pybreaker_s"),
    }
    return MicroResult(
        name="errors",
        figures={"bare_call_s": bare, **times},
        ratios=ratios,
        targets={"retry_vs_tenacity": Target("<=", 1.0), "breaker_vs_pybreaker": Target("<=", 1.0)},
        notes="overhead per successful call, bare call subtracted",
    )
