"""Speed, memory and correctness benchmarks of tfbf16 and the recsys pipeline.

Programs (`python -m benchmarks.NAME --help`): `rounding`, `exhaustive_sweep`,
`wrap_overhead`, `native_fidelity`, `update_rounding`, `bf16_weights_tables`,
`recsys_input`, `recsys_throughput`, `scaling`, `streaming_memory`. They define
absl flags and `main` only; what they share lives in library modules without
flags:

- `timing`: side-by-side timing of candidates in interleaved rounds;
- `config_flags`: a benchmark's flags made from `recsys.config` fields;
- `criteo_files`: generated files in the raw Criteo format;
- `input_sources`: a generated Criteo file and its prepared TFRecords as
  `recsys.data` bundles;
- `rss`: resident-memory sampling, the flat/GROWS verdict and its plot;
- `stream_training`: training the DCN on every row of a stream while its
  memory is sampled.
"""
