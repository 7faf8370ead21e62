"""Performance measurements: standalone scripts (``python -m unlearnbench.benchmarks.perf.<name>``) and
pytest-benchmark files, run on demand (``pytest benchmarks/perf --benchmark-only``), never in the default
test run. ``gpu_report`` measures every speed figure of ``benchmarks/README.md`` in one go;
``shadow_cost`` the cost of LiRA shadow models; ``test_perf`` the same figures as pytest-benchmark
tests."""
