"""Benchmark scenarios modelled on MLPerf inference, over any pipeline with ``predict``/``predict_batch``.

- ``single_stream``: one query at a time; latency percentiles.
- ``offline``: every sample at once, in batches; samples per second.
- ``server``: Poisson arrivals at a target QPS, served by a thread pool that batches what is queued;
  achieved QPS and p99 against a latency bound; optionally a search for the highest QPS meeting it.
  With ``url=`` the same load drives a running service (``POST /predict``, multipart ``front``).
- ``cache``: a query stream that repeats earlier images with a given probability; hit and miss
  latency and the hit rate.
- ``memory``: peak RSS per pipeline stage (``amulet_lab.memory.RssSampler``: a thread samples this process).

``server`` and ``server_search`` have async twins (``aserver``, ``aserver_search``) for code that is
already in an event loop; the sync ones work in a notebook cell too (``amulet_lab.bench.aio.run_sync``).

A pipeline is anything with ``predict(image, top_k=...)`` and ``predict_batch(images, batch_size=...)``
returning objects with ``.timings`` (ms per stage) and ``.cache_hit``; ``AmuletClassifier`` is one.
Every scenario is seeded and takes every knob as an argument; the clock and sleep are passed in.

The scenarios live one family per module: ``streams`` (single_stream, offline), ``server_runs`` and
``server_http`` (server, aserver), ``qps_search`` (server_search), ``cache``, ``memory``; ``inputs`` makes
their images, ``result`` and ``arguments`` hold what they share.
"""

from __future__ import annotations

from amulet_lab.bench.scenarios.cache import cache_scenario, repeat_stream
from amulet_lab.bench.scenarios.inputs import distinct_images, image_paths, load_images, resize_images
from amulet_lab.bench.scenarios.memory import memory_scenario
from amulet_lab.bench.scenarios.qps_search import aserver_search, server_search
from amulet_lab.bench.scenarios.result import STAGES, Pipeline, ScenarioResult
from amulet_lab.bench.scenarios.server_runs import aserver, poisson_arrivals, server
from amulet_lab.bench.scenarios.streams import offline, single_stream
from amulet_lab.bench.stats import percentile


__all__ = [
    "Pipeline",
    "ScenarioResult",
    "STAGES",
    "single_stream",
    "offline",
    "server",
    "server_search",
    "aserver",
    "aserver_search",
    "cache_scenario",
    "memory_scenario",
    "image_paths",
    "load_images",
    "distinct_images",
    "resize_images",
    "percentile",
]

# Also importable from here, outside __all__: ``poisson_arrivals`` and ``repeat_stream`` (the streams the
# scenarios issue).
