"""Analyses over finished runs: multi-seed experiments and the paper's grids (:mod:`camim.experiments.grids`,
``camim experiment --preset P --seeds ...`` and ``camim experiment table1|table2|fig4``) and the case analysis
of Fig. 5 (:mod:`camim.experiments.cases`, ``camim experiment cases``). Runs are trained by
:mod:`camim.training`, read back through :mod:`camim.runs` and reported through :mod:`camim.reports`.
See docs/training.md.
"""
