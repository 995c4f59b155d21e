"""Helpers only the tests use (kept out of the shipped packages): Grafana's SQL macro expansion,
columnar batches back as rows, and a run's offset plan in one call."""
