"""How much memory a DCN run needs, and whether it fits, before it starts.

Embedding tables dominate the DCN: 26 tables of `vocab_size x
embedding_dim` floats (millions of rows each on Criteo 1TB). `estimate`
counts the parameters (the tables from their sizes, the rest by building
the same model with two-row tables, so the count cannot drift from the
model code), and the bytes of

- the weights (FP32 variables; BF16 weights are stored in them too);
- the optimizer state: Adam's two slots per weight, plus one Kahan
  compensation buffer per weight for `update_rounding="kahan"`;
- the peak while training: the state plus `TRANSIENT_WEIGHT_COPIES` copies
  of the weights, measured here (initial weights made and copied for the
  pairing, Adam's dense slot updates, checkpoint serialization).

per process that holds them: every worker holds everything with
"default", "multi_worker" and "tpu"; each local replica holds a copy with
"mirrored"; the parameter servers share the state with "parameter_server"
(big tables are sharded over them), while the chief still makes the initial
weights once.

`check_fits` logs the estimate and raises `MemoryError` with the flags to
change when the peak exceeds the memory available to this process.

Example:

>>> e = estimate(trainer.ModelConfig(embedding_dim=16), [1_000_000] * 26,
...              "fp32", distribution)
>>> e.embedding_parameters
416000000
"""

import dataclasses
import functools

from absl import logging

from recsys import model as model_lib
from tfbf16.study.precision import Precision

# Measured on this machine (vocab_scale=10: 4.2M rows, embedding 16, 256 MiB
# of weights; fp32 and rne): peak resident memory of a run, above the
# process and data baseline, was 9.3x and 9.1x the weights with Adam's
# state at 3x, so the rest is ~6.3x; rounded up.
TRANSIENT_WEIGHT_COPIES = 6.5
ADAM_SLOTS = 2
_FLOAT_BYTES = 4
_GIB = 1 << 30


def format_bytes(count):
    """`count` bytes as "12.3 MiB" or "4.56 GiB"."""
    if count < _GIB:
        return f"{count / (1 << 20):.1f} MiB"
    return f"{count / _GIB:.2f} GiB"


@dataclasses.dataclass(frozen=True)
class Estimate:
    """The memory estimate of a run (bytes unless noted).

    Attributes:
        embedding_parameters: parameters of the 26 embedding tables.
        other_parameters: parameters of the cross, deep and logit layers.
        largest_table: (feature index, rows) of the largest table.
        weight_bytes: the FP32 weights.
        state_bytes: weights and optimizer state.
        peak_bytes: the estimated peak of the process that holds it all
            (see `per_process`).
        copies: processes (or local replicas) that each hold the state.
        per_process_state_bytes: state held by each of them.
        per_process_peak_bytes: estimated peak of each of them.
        where: who holds the state.
    """

    embedding_parameters: int
    other_parameters: int
    largest_table: tuple
    weight_bytes: int
    state_bytes: int
    peak_bytes: int
    copies: int
    per_process_state_bytes: int
    per_process_peak_bytes: int
    where: str

    @property
    def parameters(self):
        """All parameters."""
        return self.embedding_parameters + self.other_parameters

    def describe(self):
        """A few lines for the log."""
        feature, rows = self.largest_table
        return (
            f"{self.parameters:,} parameters ({self.embedding_parameters:,} in "
            f"embedding tables, the largest C{feature + 1} with {rows:,} rows): "
            f"weights {format_bytes(self.weight_bytes)}, weights + optimizer state "
            f"{format_bytes(self.state_bytes)}, estimated training peak "
            f"{format_bytes(self.per_process_peak_bytes)} per process ({self.where})")


@functools.lru_cache(maxsize=16)
def _non_embedding_parameters(model_config):
    """Parameters outside the embedding tables, counted on a tiny model."""
    tiny = model_lib.build_from_config(model_config, [2] * 26)
    return tiny.count_params() - 26 * 2 * model_config.embedding_dim


def estimate(model_config, vocab_sizes, precision, distribution=None):
    """Estimates the memory of training `model_config` on `vocab_sizes`.

    Args:
        model_config: a `recsys.trainer.ModelConfig`.
        vocab_sizes: the 26 table sizes (rows).
        precision: a `Precision` or its name.
        distribution: the `recsys.distribute.Distribution` (None: one process).

    Returns:
        An `Estimate`.
    """
    precision = Precision.parse(precision)
    vocab_sizes = [int(v) for v in vocab_sizes]
    embedding = sum(vocab_sizes) * int(model_config.embedding_dim)
    other = _non_embedding_parameters(model_config)
    weights = (embedding + other) * _FLOAT_BYTES
    buffers = ADAM_SLOTS + (1 if precision.update_rounding == "kahan" else 0)
    state = weights * (1 + buffers)
    peak = state + int(TRANSIENT_WEIGHT_COPIES * weights)
    name = distribution.name if distribution is not None else "default"
    copies, per_state, per_peak = 1, state, peak
    where = "this process holds all of it"
    if name == "mirrored":
        copies = distribution.num_replicas
        per_state = copies * state
        per_peak = per_state + (peak - state)
        where = f"{copies} local replicas each hold a copy"
    elif name == "multi_worker":
        copies = distribution.num_replicas
        where = f"each of the {copies} workers holds all of it"
    elif name == "parameter_server":
        copies = max(1, distribution.num_parameter_servers)
        per_state = state // copies
        # The chief makes the FP32 initial weights (and a copy) once.
        per_peak = max(per_state, 2 * weights)
        where = (f"the state is sharded over {copies} parameter servers; the chief "
                 "makes the initial weights")
    largest = max(range(26), key=lambda i: vocab_sizes[i])
    return Estimate(embedding, other, (largest, vocab_sizes[largest]), weights, state,
                    peak, copies, per_state, per_peak, where)


def available_bytes():
    """Memory available to new allocations on this machine (Linux
    `MemAvailable`), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(model_config, vocab_sizes, precision, distribution=None, *,
               available=None):
    """Logs the memory estimate; raises `MemoryError` if it cannot fit.

    Args:
        model_config, vocab_sizes, precision, distribution: as `estimate`.
        available: bytes available (None: `available_bytes()`; if that is
            unknown, nothing is refused).

    Returns:
        The `Estimate`.

    Raises:
        MemoryError: naming the need, what is available and the flags that
            make the model smaller.
    """
    result = estimate(model_config, vocab_sizes, precision, distribution)
    logging.info("Memory estimate: %s", result.describe())
    if available is None:
        available = available_bytes()
    if available is None or distribution is not None and distribution.name == "tpu":
        return result  # unknown here (a TPU's memory is its own)
    if result.per_process_peak_bytes > available:
        feature, rows = result.largest_table
        raise MemoryError(
            f"This run will not fit in memory: it needs about "
            f"{format_bytes(result.per_process_peak_bytes)} per process "
            f"({result.describe()}), and {format_bytes(available)} is available. "
            "Make the embedding tables smaller: --num_buckets (Criteo hash buckets "
            "per feature), --vocab_scale (synthetic cardinalities) or "
            f"--embedding_dim (now {model_config.embedding_dim}); or shard the "
            "tables over several machines with --strategy=parameter_server. "
            "(--nomemory_check skips this check.)")
    return result
