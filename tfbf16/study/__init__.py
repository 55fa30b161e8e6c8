"""The paired-seed study core: statistics, results files and plots.

A BF16 study compares precisions on the same seeds: for a seed, every
precision starts from the same initial weights and reads the same batches
in the same order, so the per-seed differences `precision - fp32` cancel
what the runs share. `recsys.study` (the DCN), `python -m paper` (the
paper's model families) and `tfbf16.compare` (any Keras model) all report
through this package:

- `tfbf16.study.stats`: means and paired differences with Student-t
  intervals (SciPy), and the verdict against a threshold.
- `tfbf16.study.summary`: per precision and metric, the mean and the paired
  difference to FP32 with their intervals (refusing runs that cannot be
  paired), over training too, and the Markdown table.
- `tfbf16.study.plots`: learning curves and paired differences, as PNG.
- `tfbf16.study.runs`: run directories reused only for the same measurement
  (identity of settings, inputs and software).
- `tfbf16.study.precision`: the names of precisions ("rne", "rne+bf16w_kahan",
  ...), and how a model and optimizer are set up for one.
- `tfbf16.study.compare`: `tfbf16.compare`, the study of any Keras model.
"""
