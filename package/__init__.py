"""unlearnbench: a benchmark suite comparing machine-unlearning methods for neural-network classifiers.

The repository's top-level folders are installed as subpackages of this one:
``benchmarks/`` -> ``unlearnbench.benchmarks``, ``methods/`` -> ``unlearnbench.methods``,
``attacks/`` -> ``unlearnbench.attacks``, ``datasets/`` -> ``unlearnbench.datasets``,
``reports/`` -> ``unlearnbench.reports``, ``tests/`` -> ``unlearnbench.tests``.
"""

__version__ = "0.1.0"
