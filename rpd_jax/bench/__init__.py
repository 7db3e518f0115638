"""Benchmarks: training, Octo teacher and ManiSkill throughput, and the server-hop baseline."""
