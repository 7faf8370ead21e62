"""Reports floor: leaderboards, reproducibility diffs and figures, as pure functions of stored run rows.

Nothing here imports ``unlearnbench.benchmarks``: the CLI reads the store and hands rows in.
"""
