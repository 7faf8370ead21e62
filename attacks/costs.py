"""Declarations of what the harness measures around a method's ``unlearn`` call (docs/metrics.md, "Cost").

The harness (``benchmarks/harness.py``) measures these values itself; they are declared here, in the
metric registry, so reports and ``docs/metrics.md`` know them like any attack's values:

- ``time_s``: synchronised wall time of the ``unlearn`` call alone (``torch.cuda.synchronize`` before
  the start and before the stop on CUDA); never evaluation.
- ``speedup_vs_retrain``: retrain's ``time_s`` / the method's, only when both times are comparable
  (the reference time was measured on the same device name, with the same torch/torchvision versions,
  CPU thread count and precision; otherwise the harness re-times the reference) and the method did
  counted work and took at least :data:`TIMER_FLOOR_S`; empty (NaN) otherwise, never huge.
- ``passes_fwd`` / ``passes_bwd``: forward and backward example passes (``methods/cost.py``): exact,
  identical across runs and machines; ``flops`` derived from them with per-example FLOPs measured once
  per architecture; ``passes_vs_retrain``: retrain's passes (forward + backward) / the method's.
- ``work.<unit>``: work that is not a network pass (e.g. ``work.lp_solves``), in its own unit.
- ``peak_mem_mib``: on CUDA, the peak of ``torch.cuda.max_memory_allocated`` during the call minus what
  was allocated when it started (data and models already resident are not the method's); on the CPU
  empty: no per-method allocation tracking exists there, and the process's resident set would count
  everything else the process holds.
- ``extra_params`` / ``extra_bytes``: parameters and bytes a deployment must store to evaluate the
  unlearned model beyond the original (PRUNE's patches; zero for weight edits).
"""

from __future__ import annotations

from .base import declare_family, declare_measured, value

TIMER_FLOOR_S = 1e-3  # below 1 ms the measurement is synchronisation and call overhead (the no-op: 2-20 µs)

_COST = dict(kind="cost", gap=False)

declare_measured("cost", description="what the unlearn call used, measured by the harness", produces=(
    value("time_s", direction="lower", unit="s", family="time", definition="synchronised wall time of the "
          "method's unlearn call alone (not evaluation)", reproducible=False, **_COST),
    value("speedup_vs_retrain", direction="higher", unit="×", family="time", definition="retrain's time_s / the "
          "method's, from comparable times only (same device name, library versions, CPU threads, precision); "
          f"empty for methods that do no counted work or take under {TIMER_FLOOR_S * 1e3:g} ms", reproducible=False,
          **_COST),
    value("passes_fwd", direction="lower", unit="passes", family="work", definition="forward example passes through "
          "the network during the call (every forward: training, probes, teachers)", **_COST),
    value("passes_bwd", direction="lower", unit="passes", family="work", definition="backward example passes through "
          "the network during the call (a gradient reaching the network's output)", **_COST),
    value("flops", direction="lower", unit="FLOPs", family="work", definition="passes_fwd × forward FLOPs per example "
          "+ passes_bwd × backward FLOPs per example (FlopCounterMode, once per architecture: matrix products and "
          "convolutions)", **_COST),
    value("passes_vs_retrain", direction="higher", unit="×", family="work", definition="retrain's example passes "
          "(forward + backward) / the method's; empty for methods that do no pass", **_COST),
    value("peak_mem_mib", direction="lower", unit="MiB", family="memory", definition="CUDA: peak memory allocated "
          "during the call above what was allocated at its start; CPU: not measured (empty)", reproducible=False,
          **_COST),
    value("extra_params", direction="lower", unit="parameters", family="storage", definition="parameters a "
          "deployment stores beyond the original model's", **_COST),
    value("extra_bytes", direction="lower", unit="bytes", family="storage", definition="bytes a deployment stores "
          "to evaluate the unlearned model beyond the original's", **_COST),
))

declare_measured("reference_cost", description="the cost of the cell's original and retrain models, for context",
                 produces=(
    value("retrain_time_s", kind="diagnostic", direction="none", unit="s", gap=False, table=False,
          definition="the retrain reference's training time used for speedup_vs_retrain", reproducible=False),
    value("retrain_time_in_run", kind="diagnostic", direction="none", unit="0/1", gap=False, table=False,
          definition="1 if that retrain time was measured by this process (trained or re-timed here), 0 if it was "
                     "read from the model cache (comparable: same device name, library versions, threads)",
          reproducible=False),
    value("retrain_passes", kind="diagnostic", direction="none", unit="passes", gap=False, table=False,
          definition="the retrain reference's example passes (forward + backward)"),
    value("original_train_time_s", kind="diagnostic", direction="none", unit="s", gap=False, table=False,
          definition="the original model's training time (when it was built)", reproducible=False),
))

declare_family("work.", value("work.<unit>", "cost", "lower", "<unit>", "work that is not a network pass, counted "
                              "in its own unit where it happens (e.g. work.lp_solves: linear programs solved)",
                              gap=False, family="work"))
declare_family("cell.", value("cell.<phase>_s", "diagnostic", "none", "s", "wall time of a phase of the cell in the "
                              "harness (prepare, original, reference, unlearn, evaluate, report, total)", gap=False,
                              table=False, reproducible=False))
