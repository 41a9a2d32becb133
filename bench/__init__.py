"""Benchmark harness: the service's latency, throughput and memory against a bare-Docker floor."""
