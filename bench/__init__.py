"""Benchmarks of bullrq: enqueue rates, drain throughput of real worker processes, enqueue-to-start latency."""
