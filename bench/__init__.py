"""Benchmarks of trusthub_eval against PostgreSQL with a large dataset (not part of the suite)."""
