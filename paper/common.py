"""What every experiment shares: precisions, the paired-seed runner, the optimizer.

The comparison is paired, as in `recsys.study`: for a seed, the model is built
once (with `keras.utils.set_random_seed(seed)`), its initial weights are
saved, and every precision starts from exactly those weights and reads the
same batches in the same order (and, for the GANs, the same noise). The
models contain no dropout and no other random layer, so the only thing that
differs between the runs of one seed is the arithmetic.

Each experiment keeps one model per precision (built once, wrapped with
`tfbf16.wrap` for the BF16 precisions) and one traced training step for it,
and loads the seed's initial weights into it (and resets its optimizer) at
the start of every run: tracing a wrapped model is what costs most at these
sizes, and this way it happens once per precision, not once per run.
"""

import dataclasses
import time

import keras
import numpy as np
import tensorflow as tf

from tfbf16.study import precision as precision_lib

#: The precisions of the paper's comparison: FP32, and BF16 emulated with
#: round-to-nearest-even or truncation.
PRECISIONS = ("fp32", "rne", "trunc")


def check_precisions(precisions):
    """Validates the compute precisions of a run of the suite (the FP32 baseline
    first); BF16 weights are not offered here (the experiments keep their own
    FP32 optimizers)."""
    parsed = precision_lib.expand(list(precisions))
    stored = [p.name for p in parsed if p.weights != "fp32"]
    if stored:
        raise ValueError(f"The paper experiments compare compute precisions ("
                         f"{', '.join(precision_lib.COMPUTE_PRECISIONS)}); BF16 weights "
                         f"({', '.join(stored)}) are offered by recsys.study and tfbf16.compare.")
    return [p.name for p in parsed]


def wrap_for(model, precision):
    """`model` itself for "fp32", else `tfbf16.wrap(model, rounding=precision)`."""
    return precision_lib.Precision.parse(precision).apply(model)


def label(precision):
    """A precision's name in tables and logs ("BF16-RNE")."""
    return precision_lib.Precision.parse(precision).label


@dataclasses.dataclass(frozen=True)
class Metric:
    """One reported metric.

    Attributes:
        key: name in the run's metrics dict.
        label: name in the table.
        higher_is_better: direction, shown as an arrow in the table.
        digits: decimals shown in the table.
    """
    key: str
    label: str
    higher_is_better: bool
    digits: int = 4


@dataclasses.dataclass(frozen=True)
class Reference:
    """A value to read a metric against (e.g. bicubic upsampling's PSNR).

    Attributes:
        label: what the value is, e.g. "bicubic upsampling".
        value: the value, in the metric's units.
        metric: the key of the metric whose table row shows it beside the
            results ("" for a note listed under the experiment only).
    """
    label: str
    value: float
    metric: str = ""


@dataclasses.dataclass
class RunResult:
    """The outcome of one (experiment, precision, seed) run.

    Attributes:
        metrics: metric key -> value on the held-out data.
        curves: series name -> list of (step, value) during training.
        seconds: wall time of the run (training and evaluation; includes
            tracing and compiling the precision's step on its first seed).
        cpu_seconds: CPU time of the process during the run (on a shared
            machine a steadier measure of cost than wall time).
        seed: the seed of the run.
        extras: anything experiment-specific (e.g. generated images), not
            written to results.json.
    """
    metrics: dict
    curves: dict
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    seed: int = 0
    extras: dict = dataclasses.field(default_factory=dict)


# Keras' Adam traces as fast as the hand-written Adam it replaced (first call of a wrapped
# BF16-RNE step, CPU s, side by side, load 3.4-4.0: ResNet-20 3.3 vs 2.5, DS2 1.7 vs 1.8).
def adam(variables, learning_rate, *, beta_1=0.9, decay_steps=None, warmup_steps=0,
         clipnorm=None):
    """A `keras.optimizers.Adam` built for `variables`, with the schedule the experiments use.

    The paper keeps the weight update in FP32 (only GEMM/convolution inputs
    are BF16), so the optimizer is the same for every precision.

    Args:
        variables: the variables to train (the optimizer's slots are built
            now, so a traced step can create nothing).
        learning_rate: peak learning rate.
        beta_1: Adam's first-moment decay (beta_2 and epsilon are Keras'
            defaults).
        decay_steps: if set, the learning rate follows a cosine from
            `learning_rate` to 0 over this many steps
            (`keras.optimizers.schedules.CosineDecay`), after `warmup_steps`
            of linear warm-up from 0.
        warmup_steps: linear warm-up length (with `decay_steps`).
        clipnorm: if set, gradients are clipped by their global norm.

    Returns:
        The built optimizer; `reset_optimizer` restarts it.
    """
    if decay_steps:
        warmup_steps = int(warmup_steps)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else float(learning_rate),
            decay_steps=max(int(decay_steps) - warmup_steps, 1),
            warmup_target=float(learning_rate) if warmup_steps else None,
            warmup_steps=warmup_steps)
    else:
        learning_rate = float(learning_rate)
    optimizer = keras.optimizers.Adam(learning_rate, beta_1=beta_1, global_clipnorm=clipnorm)
    optimizer.build(list(variables))
    return optimizer


def reset_optimizer(optimizer):
    """Restarts a built Keras optimizer: its iteration counter and slots become 0.

    Every optimizer variable is zeroed except a constant learning rate (a
    variable named "learning_rate"), so one traced training step can serve
    every seed.
    """
    for variable in optimizer.variables:
        if variable.name != "learning_rate":
            variable.assign(np.zeros(variable.shape, variable.dtype))


def batch_indices(n, batch_size, steps, seed, stream=0):
    """Index arrays of `steps` batches: epochs of a seeded permutation of range(n).

    The order depends only on (seed, stream), so every precision of a seed
    reads the same batches.
    """
    rng = np.random.default_rng([seed, 7919, stream])
    order = np.empty(0, np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(n)])
        yield order[:batch_size]
        order = order[batch_size:]


def predict_batched(fn, arrays, batch_size):
    """Concatenated `fn(*batch)` over the batches of same-length `arrays`.

    The last batch is padded to `batch_size` (and its padding dropped) so a
    traced `fn` sees a single shape.
    """
    n = len(arrays[0])
    outputs = []
    for start in range(0, n, batch_size):
        chunk = [a[start:start + batch_size] for a in arrays]
        size = len(chunk[0])
        if size < batch_size:
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch_size - size, axis=0)]) for c in chunk]
        out = fn(*chunk)
        outputs.append(np.asarray(out)[:size])
    return np.concatenate(outputs)


class Curve:
    """Averages a training series over windows of `every` steps."""

    def __init__(self, every):
        self.every = max(int(every), 1)
        self.points = []
        self._sum, self._count = 0.0, 0

    def add(self, step, value):
        self._sum += float(value)
        self._count += 1
        if self._count == self.every:
            self.flush(step)

    def flush(self, step):
        if self._count:
            self.points.append((int(step), self._sum / self._count))
            self._sum, self._count = 0.0, 0


class Experiment:
    """One model family of the paper, trainable in any precision.

    Subclasses set the class attributes and implement `build_models(seed)`
    (the FP32 models; their weights are what `initial_weights` saves),
    `make_trainer(precision)` (models, optimizer and traced functions for a
    precision, built once) and `train_and_evaluate(trainer, seed)`.

    Attributes:
        name: the `--experiments` name.
        family, model_name: the table's first two columns.
        metrics: the `Metric`s reported.
    """
    name = ""
    family = ""
    model_name = ""
    metrics = ()

    def __init__(self, config, context=None):
        self.config = config
        self.context = context if context is not None else {}
        self._trainers = {}

    # -- to implement
    def build_models(self):
        """Returns the FP32 models (a list), built from Keras' global seed."""
        raise NotImplementedError

    def make_trainer(self, precision):
        """Returns an object with `.models` (FP32 models, same order as
        `build_models`), `.optimizers` (built by `adam`) and whatever
        `train_and_evaluate` needs."""
        raise NotImplementedError

    def train_and_evaluate(self, trainer, seed):
        """Trains the (freshly initialized) trainer; returns a RunResult."""
        raise NotImplementedError

    def references(self):
        """`Reference`s: values to read the metrics against (e.g. real data's scores)."""
        return []

    def description(self):
        """One paragraph: data, model, training and metric, for results.md."""
        return ""

    # -- shared
    def initial_weights(self, seed):
        """Builds the models once from `seed`; returns their weights."""
        keras.utils.set_random_seed(seed)
        return [model.get_weights() for model in self.build_models()]

    def trainer(self, precision):
        if precision not in self._trainers:
            self._trainers[precision] = self.make_trainer(precision)
        return self._trainers[precision]

    def run(self, precision, seed, weights):
        """Trains and evaluates one precision from the seed's initial weights."""
        start, cpu_start = time.time(), time.process_time()
        trainer = self.trainer(precision)
        for model, values in zip(trainer.models, weights):
            model.set_weights(values)
        for optimizer in trainer.optimizers:
            reset_optimizer(optimizer)
        result = self.train_and_evaluate(trainer, seed)
        for key, value in result.metrics.items():
            result.metrics[key] = float(value)
        result.seconds = time.time() - start
        result.cpu_seconds = time.process_time() - cpu_start
        result.seed = seed
        return result


class Trainer:
    """A plain record of what `make_trainer` builds."""

    def __init__(self, models, optimizers, **kwargs):
        self.models = list(models)
        self.optimizers = list(optimizers)
        self.__dict__.update(kwargs)


def scaled_steps(steps, scale):
    return max(1, int(round(steps * scale)))
