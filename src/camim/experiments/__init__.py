"""Analyses over runs: multi-seed experiments and the grids of ``camim/configs/grids.yaml``
(:mod:`camim.experiments.grids`, ``camim experiment --preset P --seeds ...`` and ``camim experiment GRID``),
trained in this process, a local process pool or Ray (:mod:`camim.experiments.launch`, one run each through
:mod:`camim.experiments.worker`), with the settings that differ from the paper's named
(:mod:`camim.experiments.paper`); and the case analysis of Fig. 5 (:mod:`camim.experiments.cases`,
``camim experiment cases``). Runs are trained by :mod:`camim.training`, read back through :mod:`camim.runs` and
reported through :mod:`camim.reports`. See docs/training.md.
"""
