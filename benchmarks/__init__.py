"""Benchmarks floor: suites (declared data), the harness that runs one cell, the model cache, executors,
the results store and the command-line interface."""
