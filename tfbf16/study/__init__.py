"""The paired-seed study core: statistics, results files and plots.

A BF16 study compares precisions on the same seeds: for a seed, every
precision starts from the same initial weights and reads the same batches
in the same order, so the per-seed differences `precision - fp32` cancel
what the runs share. `recsys.study` (the DCN), `python -m paper` (the
paper's model families) and `tfbf16.compare` (any Keras model) all report
through this package:

- `tfbf16.study.stats`: means and paired differences with Student-t
  intervals (SciPy), and the verdict against a threshold.
"""
