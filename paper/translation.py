"""Machine translation (the paper's GNMT): an LSTM encoder-decoder with attention.

Model (Wu et al. 2016, scaled down): the encoder is a bidirectional LSTM
followed by unidirectional LSTMs (residual connections from the third layer
on); the decoder's first LSTM produces the attention query, the attention
context (a single-head `MultiHeadAttention` over the encoder outputs) is
concatenated to the input of every later decoder LSTM, and a Dense layer gives
the next-token logits. Training is teacher-forced (cross-entropy of the next
token, padding excluded).

Metrics on held-out pairs:
- greedy token accuracy: the decoder is fed its own argmax predictions
  (starting from BOS); position t of the prediction is compared with position
  t of the reference, over the reference's tokens including its EOS;
- teacher-forced token accuracy: the same comparison when the decoder is fed
  the reference prefix;
- BLEU (corpus, 4-gram, no smoothing) of the greedy translations, cut at
  their first EOS.

Laptop scale: a deterministic synthetic "translation" in which a word's
translation depends on its context: target token i is a fixed random
dictionary's entry for (source token i - 1, source token i), i.e. 32 x 33
entries; the source tokens follow a Zipf law (token k with probability
~ 1/(k + 1)), so, as in real text, frequent pairs are learned early and rare
ones late or never (lengths 4-10, 6,000 training and 500 held-out pairs).
The alignment is monotone; the model still has to learn it through its
attention. Measured in FP32 with the defaults (800 steps) on seeds 0-4: greedy
token accuracy 0.72-0.75, BLEU 42-48. (Reversed and permuted tokens, the
earlier task, was solved exactly by every run, a ceiling; a context-dependent
reversal was learned all-or-nothing, 0.50 or 1.00 depending on the seed.)

Full scale (`--full --wmt_dir=...`): parallel text files `train.<src>`,
`train.<tgt>`, `test.<src>`, `test.<tgt>` in `--wmt_dir` (e.g. WMT'16
English-German with newstest2014 as test; `--wmt_langs=en,de`), one sentence
per line, tokens separated by spaces (apply your own tokenization or subword
segmentation first). The vocabularies are the most frequent training tokens.

The model uses no Keras mask: padding is a token of its own, and the loss and
the metrics skip padded target positions. With the current tfbf16 (commit
8b7e8b1 on) the attention's projections, q, k, v and softmax output are all
rounded (before that commit, Keras 3's fused attention path left the softmax
output FP32 when dropout was 0).
"""

import collections
import dataclasses
import functools
import os

import keras
import numpy as np
import tensorflow as tf

from paper import common
from paper import data
from paper import metrics

L = keras.layers

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = 4


@dataclasses.dataclass(frozen=True)
class TranslationConfig:
    dataset: str = "synthetic"       # "synthetic" or "wmt"
    wmt_dir: str = ""
    langs: tuple = ("en", "de")
    tokens: int = 32                 # synthetic vocabulary (without specials)
    zipf: float = 1.0                # synthetic: token k drawn with probability ~ 1 / (k + 1)^zipf
    vocab_size: int = 32_000         # WMT vocabulary per language (with specials)
    min_length: int = 4
    max_length: int = 10
    train_pairs: int = 6000          # WMT: 0 reads every pair
    test_pairs: int = 500
    embedding: int = 32
    units: int = 64
    encoder_layers: int = 1          # the first is bidirectional
    decoder_layers: int = 2          # the first gives the attention query
    steps: int = 800
    batch_size: int = 64
    learning_rate: float = 1e-2
    warmup_steps: int = 10
    clipnorm: float = 5.0
    eval_batch_size: int = 250
    jit_compile: bool = True         # XLA: several times faster for these small LSTMs on CPU
    data_seed: int = 4321

    @property
    def model_name(self):
        return (f"GNMT-style ({self.encoder_layers}+{self.decoder_layers} LSTM-{self.units}, "
                "attention)")


def synthetic_config(**overrides):
    return dataclasses.replace(TranslationConfig(), **overrides)


def tiny_config(**overrides):
    return dataclasses.replace(
        TranslationConfig(tokens=6, max_length=5, train_pairs=64, test_pairs=32, embedding=8,
                          units=8, steps=3, batch_size=16, warmup_steps=0, eval_batch_size=32,
                          jit_compile=False),
        **overrides)


def wmt_config(wmt_dir, langs=("en", "de"), **overrides):
    """GNMT-like size: 1024 units, 4 encoder (1 bidirectional) + 4 decoder layers."""
    return dataclasses.replace(
        TranslationConfig(dataset="wmt", wmt_dir=wmt_dir, langs=tuple(langs), max_length=50,
                          train_pairs=0, test_pairs=3003, embedding=1024, units=1024,
                          encoder_layers=4, decoder_layers=4, steps=340_000, batch_size=128,
                          learning_rate=5e-4, warmup_steps=2_000, eval_batch_size=64),
        **overrides)


# ------------------------------------------------------------------- data


def _pad(sequences, length):
    out = np.full((len(sequences), length), PAD, np.int32)
    for i, seq in enumerate(sequences):
        out[i, :len(seq)] = seq[:length]
    return out


def make_pairs(sources, targets, max_length):
    """(source, decoder input, decoder target) int32 arrays from token-id lists.

    The decoder target is the target followed by EOS; the decoder input is
    BOS followed by the target (teacher forcing). Shapes: [N, max_length],
    [N, max_length + 1], [N, max_length + 1].
    """
    targets = [list(t) + [EOS] for t in targets]
    return (_pad(sources, max_length), _pad([[BOS] + t[:-1] for t in targets], max_length + 1),
            _pad(targets, max_length + 1))


def translation_table(config):
    """The synthetic task's dictionary: [previous source token + 1, source token] -> target token.

    Row 0 serves the first token of a sentence (no previous token). Entries
    are drawn uniformly from the target vocabulary (fixed by `data_seed`).
    """
    rng = np.random.default_rng([config.data_seed, 0])
    return rng.integers(0, config.tokens, (config.tokens + 1, config.tokens)) + SPECIALS


def synthetic_pairs(config, count, stream):
    """Source token sequences and their translations (see the module docstring)."""
    table = translation_table(config)
    frequencies = 1.0 / np.arange(1, config.tokens + 1) ** config.zipf
    rng = np.random.default_rng([config.data_seed, 1, stream])
    sources, targets = [], []
    for _ in range(count):
        length = int(rng.integers(config.min_length, config.max_length + 1))
        source = rng.choice(config.tokens, length, p=frequencies / frequencies.sum())
        previous = np.concatenate([[-1], source[:-1]]) + 1
        sources.append((source + SPECIALS).tolist())
        targets.append(table[previous, source].tolist())
    return make_pairs(sources, targets, config.max_length)


def _read_lines(path, limit):
    if not os.path.exists(path):
        raise data.DataNotFoundError(f"Missing {path} (see paper.translation's docstring).")
    with open(path, encoding="utf-8") as f:
        lines = []
        for line in f:
            lines.append(line.split())
            if limit and len(lines) >= limit:
                break
    return lines


def build_vocabulary(sentences, size):
    counts = collections.Counter(token for sentence in sentences for token in sentence)
    words = [w for w, _ in counts.most_common(size - SPECIALS)]
    return {w: i + SPECIALS for i, w in enumerate(words)}


def wmt_pairs(config):
    """((train arrays), (test arrays), vocabularies) from `--wmt_dir`."""
    directory = data._require_dir(config.wmt_dir, "--wmt_dir")
    src, tgt = config.langs
    train_src = _read_lines(os.path.join(directory, f"train.{src}"), config.train_pairs)
    train_tgt = _read_lines(os.path.join(directory, f"train.{tgt}"), config.train_pairs)
    test_src = _read_lines(os.path.join(directory, f"test.{src}"), config.test_pairs)
    test_tgt = _read_lines(os.path.join(directory, f"test.{tgt}"), config.test_pairs)
    if len(train_src) != len(train_tgt) or len(test_src) != len(test_tgt):
        raise data.DataNotFoundError(f"train/test.{src} and .{tgt} have different line counts.")
    vocabularies = (build_vocabulary(train_src, config.vocab_size),
                    build_vocabulary(train_tgt, config.vocab_size))

    def encode(sentences, vocabulary):
        return [[vocabulary.get(t, UNK) for t in s] for s in sentences]

    def keep(sources, targets, limit_length):
        pairs = [(s, t) for s, t in zip(sources, targets)
                 if not limit_length or (len(s) <= config.max_length and len(t) <= config.max_length)]
        return [s for s, _ in pairs], [t for _, t in pairs]

    train = keep(encode(train_src, vocabularies[0]), encode(train_tgt, vocabularies[1]), True)
    test = keep(encode(test_src, vocabularies[0]), encode(test_tgt, vocabularies[1]), False)
    return (make_pairs(*train, config.max_length), make_pairs(*test, config.max_length),
            vocabularies)


@functools.lru_cache(maxsize=4)
def _dataset(config):
    if config.dataset == "synthetic":
        return (synthetic_pairs(config, config.train_pairs, 0),
                synthetic_pairs(config, config.test_pairs, 1),
                (config.tokens + SPECIALS, config.tokens + SPECIALS))
    train, test, vocabularies = wmt_pairs(config)
    return train, test, tuple(len(v) + SPECIALS for v in vocabularies)


# ------------------------------------------------------------------ model


def build_model(config, vocab_sizes):
    source = keras.Input((config.max_length,), dtype="int32", name="source")
    decoder_input = keras.Input((config.max_length + 1,), dtype="int32", name="decoder_input")
    x = L.Embedding(vocab_sizes[0], config.embedding, name="source_embedding")(source)
    x = L.Bidirectional(L.LSTM(config.units // 2, return_sequences=True), name="encoder0")(x)
    for i in range(1, config.encoder_layers):
        y = L.LSTM(config.units, return_sequences=True, name=f"encoder{i}")(x)
        x = L.Add(name=f"encoder{i}_residual")([x, y]) if i >= 2 else y
    encoded = x
    y = L.Embedding(vocab_sizes[1], config.embedding, name="target_embedding")(decoder_input)
    query = L.LSTM(config.units, return_sequences=True, name="decoder0")(y)
    context = L.MultiHeadAttention(num_heads=1, key_dim=config.units, name="attention")(query, encoded)
    x = query
    for i in range(1, config.decoder_layers):
        y = L.LSTM(config.units, return_sequences=True, name=f"decoder{i}")(
            L.Concatenate(name=f"decoder{i}_input")([x, context]))
        x = L.Add(name=f"decoder{i}_residual")([x, y]) if i >= 2 else y
    logits = L.Dense(vocab_sizes[1], name="logits")(x)
    return keras.Model([source, decoder_input], logits, name="gnmt")


def greedy_decode(predict, sources, length, batch_size):
    """Greedy decoding with a causal teacher-forced model: `length` passes."""
    decoder_input = np.full((len(sources), length), PAD, np.int32)
    decoder_input[:, 0] = BOS
    predicted = np.zeros((len(sources), length), np.int32)
    for t in range(length):
        logits = common.predict_batched(predict, [sources, decoder_input], batch_size)
        predicted[:, t] = np.argmax(logits[:, t], -1)
        if t + 1 < length:
            decoder_input[:, t + 1] = predicted[:, t]
    return predicted


def _until_eos(row):
    row = list(row)
    return row[:row.index(EOS)] if EOS in row else row


class TranslationExperiment(common.Experiment):
    name = "gnmt"
    family = "Machine translation (RNN)"
    metrics = (
        common.Metric("greedy_token_accuracy", "token accuracy (greedy decoding)", True, 4),
        common.Metric("teacher_forced_token_accuracy", "token accuracy (teacher forced)", True, 4),
        common.Metric("bleu", "BLEU (greedy decoding)", True, 2),
    )

    def __init__(self, config, context=None):
        super().__init__(config, context)
        self.model_name = config.model_name
        if config.dataset == "wmt":  # fail early if missing
            directory = data._require_dir(config.wmt_dir, "--wmt_dir")
            for split in ("train", "test"):
                for lang in config.langs:
                    if not os.path.exists(os.path.join(directory, f"{split}.{lang}")):
                        raise data.DataNotFoundError(
                            f"Missing {split}.{lang} in --wmt_dir={directory!r} (parallel text, "
                            "one sentence per line, space-separated tokens).")

    def description(self):
        c = self.config
        where = (f"synthetic in-context translation ({c.tokens} Zipf-distributed tokens, lengths "
                 f"{c.min_length}-{c.max_length}, {c.train_pairs} training / {c.test_pairs} "
                 "held-out pairs)" if c.dataset == "synthetic"
                 else f"WMT {c.langs[0]}-{c.langs[1]} from {c.wmt_dir}")
        return (f"{self.model_name} on {where}; teacher-forced cross-entropy, Adam (lr "
                f"{c.learning_rate:g}, clip norm {c.clipnorm:g}, cosine decay), batch "
                f"{c.batch_size}, {c.steps} steps; metrics: token accuracy of greedy and of "
                "teacher-forced decoding, BLEU of greedy decoding.")

    def build_models(self):
        return [build_model(self.config, _dataset(self.config)[2])]

    def make_trainer(self, precision):
        c = self.config
        model = build_model(c, _dataset(c)[2])
        wrapped = common.wrap_for(model, precision)
        variables = wrapped.trainable_variables
        optimizer = common.adam(variables, c.learning_rate, decay_steps=c.steps,
                                warmup_steps=c.warmup_steps, clipnorm=c.clipnorm)

        @tf.function(jit_compile=c.jit_compile)
        def train_step(source, decoder_input, target):
            weights = tf.cast(target != PAD, tf.float32)
            with tf.GradientTape() as tape:
                logits = wrapped([source, decoder_input], training=True)
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
                loss = tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        @tf.function(jit_compile=c.jit_compile)
        def predict(source, decoder_input):
            return wrapped([source, decoder_input], training=False)

        return common.Trainer([model], [optimizer], train_step=train_step, predict=predict)

    def train_and_evaluate(self, trainer, seed):
        c = self.config
        (source, decoder_input, target), test, _ = _dataset(c)
        curve = common.Curve(max(c.steps // 40, 1))
        step = 0
        for step, index in enumerate(common.batch_indices(len(source), c.batch_size, c.steps, seed), 1):
            curve.add(step, trainer.train_step(source[index], decoder_input[index], target[index]))
        curve.flush(step)
        return common.RunResult(self.evaluate(trainer.predict, test), {"cross-entropy": curve.points})

    def evaluate(self, predict, test):
        source, decoder_input, target = test
        c = self.config
        mask = target != PAD
        forced = np.argmax(common.predict_batched(predict, [source, decoder_input],
                                                  c.eval_batch_size), -1)
        greedy = greedy_decode(predict, source, c.max_length + 1, c.eval_batch_size)
        return {
            "greedy_token_accuracy": metrics.token_accuracy(greedy, target, mask),
            "teacher_forced_token_accuracy": metrics.token_accuracy(forced, target, mask),
            "bleu": metrics.corpus_bleu([_until_eos(r) for r in greedy],
                                        [_until_eos(r) for r in target]),
        }
