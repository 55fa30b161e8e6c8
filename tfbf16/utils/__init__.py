"""Small utilities shared by tfbf16, its study programs and benchmarks.

- `tfbf16.utils.files`: atomic file writes and JSON reading with errors that
  name the file.
- `tfbf16.utils.cli`: running an absl program so that routine mistakes end
  with one line instead of a traceback.
- `tfbf16.utils.tensorboard`: TensorBoard scalars and histograms written
  without the tensorboard package (`write_scalars`, `write_histograms`), and
  `read_events` to read them back.
"""
