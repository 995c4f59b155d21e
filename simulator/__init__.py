"""Deterministic traffic simulator: the demo's, the tests' and the benchmarks' source of Mixer calls.

Modules, in data-flow order:

* :mod:`simulator.config` - every default (:class:`~simulator.config.SimulationProfile`,
  :class:`~simulator.config.SimulationConfig`);
* :mod:`simulator.catalog` - APIs, applications, subscriptions, users (seeded);
* :mod:`simulator.tokens` - RS256 APIM JWTs, opaque tokens, JWKS, subscription catalog rows;
* :mod:`simulator.traffic` - :class:`~simulator.traffic.SimRequest` streams;
* :mod:`simulator.mixer` - Mixer 1.4 ``HandleMetricRequest`` s for the ``wso2-metrics`` instance;
* :mod:`simulator.ground_truth` - exact per-minute counts of what was delivered;
* :mod:`simulator.sender` - gRPC replay with retries (same ``dedup_id``);
* :mod:`simulator.runner` / :mod:`simulator.cli` - :func:`simulate` and ``apim-analytics simulate``.

Submodules are imported on demand so ``import simulator.catalog`` does not pull in gRPC.
"""
