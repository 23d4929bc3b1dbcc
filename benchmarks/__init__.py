"""Benchmark suite comparing volley with Ray, Dask, joblib and the standard library."""
