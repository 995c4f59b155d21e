"""Benchmarks that print numbers and compare against a baseline measured in the same run."""
