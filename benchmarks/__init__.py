"""Benchmarks of the service: its in-process floor, HTTP latency and throughput, and the Keras baseline.

``python -m benchmarks.run`` runs everything and writes the JSON; ``python -m benchmarks.guard`` is the
short CI regression guard. Not part of the installed package: run them from the repository root.
"""
