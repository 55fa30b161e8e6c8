"""Speech recognition (the paper's DeepSpeech2): a CTC acoustic model with GRUs.

Model (Amodei et al. 2016, scaled down): a 2-D convolution over (time,
frequency) with stride 2 in both, then bidirectional GRU layers, then a
per-frame Dense layer over the labels plus the CTC blank, trained with the CTC
loss. Decoding is greedy (best path: argmax per frame, merge repeats, drop
blanks); the metric is the label error rate (edit distance / reference
length) on held-out utterances.

Laptop scale: synthetic "spoken digits", generated in code with a fixed data
seed. Each digit 0-9 has a prototype: a smooth random feature sequence (16
"filterbank" channels) of 4-8 frames. A spoken digit is its prototype
time-stretched by a random factor in [0.8, 1.25], scaled by a random gain and
with Gaussian noise added; an utterance is 1-4 spoken digits separated by
short noisy pauses, zero-padded to a fixed length; its label sequence is the
digits. Utterances differ only by the noise, the stretching, the gains and the
pauses, so the model has to learn to segment and recognize the digits.

Full scale (`--full --librispeech_dir=...`): LibriSpeech (`train-clean-100/`
for training, `dev-clean/` for evaluation, each `<speaker>/<chapter>/` with
`*.trans.txt` transcripts and `.flac` (or `.wav`) audio), 80 log-mel channels
(25 ms windows, 10 ms hop), characters (a-z, space, apostrophe) as labels; the
metric is the character error rate, and the word error rate of the decoded
characters is reported too. FLAC needs the `soundfile` package; without it,
convert the audio to WAV beside the FLAC files (same name, `.wav`).

The model uses no Keras mask: padding frames are zeros and the CTC loss and
the decoding use each utterance's true length. A wrapped GRU rounds only the
inputs of its matmuls (x(t) and h(t-1) as they enter the kernels); the state
interpolation z * h(t-1) + (1 - z) * h~ stays FP32, as in the paper. (Before
the fix of 2026-12-01, h(t-1) was rounded for the whole cell step; the
README's table was measured then.)
"""

import dataclasses
import functools
import glob
import os

import keras
import numpy as np
import tensorflow as tf

from paper import common
from paper import data
from paper import metrics

L = keras.layers

CHARACTERS = " abcdefghijklmnopqrstuvwxyz'"


@dataclasses.dataclass(frozen=True)
class SpeechConfig:
    dataset: str = "digits"          # "digits" (synthetic) or "librispeech"
    librispeech_dir: str = ""
    features: int = 16
    max_frames: int = 56             # padded utterance length (frames)
    max_labels: int = 4
    labels: int = 10                 # without the blank
    train_utterances: int = 2000
    test_utterances: int = 400
    noise: float = 2.5
    conv_channels: int = 16
    conv_kernel: tuple = (5, 5)
    gru_layers: int = 2
    gru_units: int = 48
    steps: int = 100
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_steps: int = 10
    clipnorm: float = 5.0
    eval_batch_size: int = 200
    data_seed: int = 1234

    @property
    def model_name(self):
        return (f"DeepSpeech2-style (conv + {self.gru_layers}x BiGRU-{self.gru_units}, CTC)")


def digits_config(**overrides):
    return dataclasses.replace(SpeechConfig(), **overrides)


def tiny_config(**overrides):
    return dataclasses.replace(
        SpeechConfig(train_utterances=64, test_utterances=32, conv_channels=4, gru_layers=1,
                     gru_units=8, steps=3, batch_size=16, warmup_steps=0, eval_batch_size=32),
        **overrides)


def librispeech_config(librispeech_dir, **overrides):
    """DeepSpeech2-like size: 80 log-mels, 3 BiGRU-512, ~16 s utterances."""
    return dataclasses.replace(
        SpeechConfig(dataset="librispeech", librispeech_dir=librispeech_dir, features=80,
                     max_frames=1600, max_labels=400, labels=len(CHARACTERS),
                     conv_channels=32, conv_kernel=(11, 41), gru_layers=3, gru_units=512,
                     steps=100_000, batch_size=32, learning_rate=3e-4, warmup_steps=1_000,
                     clipnorm=400.0, eval_batch_size=32),
        **overrides)


# ------------------------------------------------------------------- data


def _prototypes(config):
    rng = np.random.default_rng([config.data_seed, 1])
    protos = []
    for _ in range(config.labels):
        length = int(rng.integers(4, 9))
        raw = rng.standard_normal((length + 2, config.features + 2))
        smooth = (raw[:-2] + raw[1:-1] + raw[2:]) / 3.0          # along time
        smooth = (smooth[:, :-2] + smooth[:, 1:-1] + smooth[:, 2:]) / 3.0  # along frequency
        protos.append(2.0 * smooth / smooth.std())
    return protos


def _stretch(sequence, length):
    """Linear interpolation of a [T, F] sequence to `length` frames."""
    old = np.linspace(0.0, 1.0, len(sequence))
    new = np.linspace(0.0, 1.0, length)
    return np.stack([np.interp(new, old, sequence[:, f]) for f in range(sequence.shape[1])], 1)


def synthetic_utterances(config, count, stream):
    """`count` synthetic spoken-digit utterances (a pure function of the arguments).

    Returns:
        features [count, max_frames, features] float32, frame counts [count],
        labels [count, max_labels] int32 (digit + 1; 0 is the blank and pads),
        label counts [count].
    """
    protos = _prototypes(config)
    rng = np.random.default_rng([config.data_seed, 2, stream])
    feats = np.zeros((count, config.max_frames, config.features), np.float32)
    labels = np.zeros((count, config.max_labels), np.int32)
    frame_counts = np.zeros(count, np.int32)
    label_counts = np.zeros(count, np.int32)
    i = 0
    while i < count:
        digits = rng.integers(0, config.labels, int(rng.integers(1, config.max_labels + 1)))
        pieces = [rng.normal(0.0, 0.3, (int(rng.integers(0, 3)), config.features))]
        for digit in digits:
            proto = protos[digit]
            length = max(2, int(round(len(proto) * rng.uniform(0.8, 1.25))))
            spoken = _stretch(proto, length) * rng.uniform(0.8, 1.2)
            pieces.append(spoken + rng.normal(0.0, config.noise, spoken.shape))
            pieces.append(rng.normal(0.0, 0.3, (int(rng.integers(1, 4)), config.features)))
        utterance = np.concatenate(pieces)
        if len(utterance) > config.max_frames:
            continue  # too long for the padded length: draw another
        feats[i, :len(utterance)] = utterance
        frame_counts[i] = len(utterance)
        labels[i, :len(digits)] = digits + 1
        label_counts[i] = len(digits)
        i += 1
    return feats, frame_counts, labels, label_counts


@functools.lru_cache(maxsize=4)
def _synthetic_split(config):
    train = synthetic_utterances(config, config.train_utterances, stream=0)
    test = synthetic_utterances(config, config.test_utterances, stream=1)
    return train, test


def _read_audio(path):
    wav = os.path.splitext(path)[0] + ".wav"
    if os.path.exists(wav):
        audio, rate = tf.audio.decode_wav(tf.io.read_file(wav), desired_channels=1)
        return audio[:, 0].numpy(), int(rate)
    try:
        import soundfile  # noqa: PLC0415 (optional dependency, only for FLAC)
    except ImportError as error:
        raise data.DataNotFoundError(
            f"{path} is FLAC and the 'soundfile' package is not installed: pip install "
            "soundfile, or convert the audio to .wav files beside the .flac ones.") from error
    audio, rate = soundfile.read(path, dtype="float32")
    return audio, rate


def log_mel(audio, rate, channels):
    """80 (or `channels`) log-mel energies, 25 ms windows every 10 ms."""
    audio = tf.convert_to_tensor(audio, tf.float32)
    frame, hop = int(0.025 * rate), int(0.010 * rate)
    spectrum = tf.abs(tf.signal.stft(audio, frame, hop, fft_length=512))
    mel = tf.signal.linear_to_mel_weight_matrix(channels, 257, rate, 20.0, rate / 2.0)
    features = tf.math.log(tf.matmul(tf.square(spectrum), mel) + 1e-6)
    mean, variance = tf.nn.moments(features, axes=[0])
    return ((features - mean) / tf.sqrt(variance + 1e-6)).numpy()


def librispeech_utterances(directory, subset, config, limit=None):
    """(features, frame counts, labels, label counts) of a LibriSpeech subset.

    Utterances longer than `max_frames` frames or `max_labels` characters
    are skipped. Everything is read into memory, so pass `limit` for a
    subset (the full train-clean-100 needs ~50 GB as float32 features).
    """
    root = os.path.join(data._require_dir(directory, "--librispeech_dir"), subset)
    transcripts = sorted(glob.glob(os.path.join(root, "*", "*", "*.trans.txt")))
    if not transcripts:
        raise data.DataNotFoundError(
            f"No LibriSpeech transcripts <speaker>/<chapter>/*.trans.txt under {root!r}.")
    index = {c: i + 1 for i, c in enumerate(CHARACTERS)}
    feats, frames, labels, label_counts = [], [], [], []
    for transcript in transcripts:
        with open(transcript, encoding="utf-8") as f:
            lines = [line.strip().split(" ", 1) for line in f if line.strip()]
        for utterance_id, text in lines:
            audio_path = os.path.join(os.path.dirname(transcript), utterance_id + ".flac")
            text = text.lower()
            if len(text) > config.max_labels:
                continue
            audio, rate = _read_audio(audio_path)
            features = log_mel(audio, rate, config.features)
            if len(features) > config.max_frames:
                continue
            padded = np.zeros((config.max_frames, config.features), np.float32)
            padded[:len(features)] = features
            label = np.zeros(config.max_labels, np.int32)
            label[:len(text)] = [index[c] for c in text if c in index][:config.max_labels]
            feats.append(padded)
            frames.append(len(features))
            labels.append(label)
            label_counts.append(int(np.sum(label > 0)))
            if limit and len(feats) >= limit:
                return (np.stack(feats), np.array(frames, np.int32), np.stack(labels),
                        np.array(label_counts, np.int32))
    return (np.stack(feats), np.array(frames, np.int32), np.stack(labels),
            np.array(label_counts, np.int32))


# ------------------------------------------------------------------ model


def output_frames(frames):
    """Frames after the stride-2 front end ('same' padding)."""
    return (np.asarray(frames) + 1) // 2


def build_model(config):
    inputs = keras.Input((config.max_frames, config.features), name="features")
    x = L.Reshape((config.max_frames, config.features, 1), name="add_channel")(inputs)
    x = L.Conv2D(config.conv_channels, config.conv_kernel, strides=2, padding="same",
                 name="conv")(x)
    x = L.ReLU(max_value=20.0, name="clipped_relu")(x)  # DeepSpeech2's clipped ReLU
    frames, bins = (config.max_frames + 1) // 2, (config.features + 1) // 2
    x = L.Reshape((frames, bins * config.conv_channels), name="flatten_frequency")(x)
    for i in range(config.gru_layers):
        x = L.Bidirectional(L.GRU(config.gru_units, return_sequences=True), name=f"bigru{i}")(x)
    outputs = L.Dense(config.labels + 1, name="logits")(x)  # class 0 is the CTC blank
    return keras.Model(inputs, outputs, name="deepspeech2")


class SpeechExperiment(common.Experiment):
    name = "ds2"
    family = "Speech recognition (RNN)"
    metrics = (common.Metric("ler", "label error rate (greedy CTC)", False, 4),)

    def __init__(self, config, context=None):
        super().__init__(config, context)
        self.model_name = config.model_name
        if config.dataset == "librispeech":
            self.metrics = (common.Metric("ler", "character error rate (greedy CTC)", False, 4),
                            common.Metric("wer", "word error rate (greedy CTC)", False, 4))
            for subset in ("train-clean-100", "dev-clean"):  # fail early if missing
                path = os.path.join(data._require_dir(config.librispeech_dir, "--librispeech_dir"), subset)
                if not glob.glob(os.path.join(path, "*", "*", "*.trans.txt")):
                    raise data.DataNotFoundError(
                        f"No LibriSpeech {subset} (<speaker>/<chapter>/*.trans.txt) under {path!r}.")
        self._data = None

    def description(self):
        c = self.config
        where = (f"synthetic spoken digits ({c.train_utterances} training / {c.test_utterances} "
                 f"held-out utterances of 1-{c.max_labels} digits, {c.features} channels, noise "
                 f"sd {c.noise})" if c.dataset == "digits" else f"LibriSpeech from {c.librispeech_dir}")
        return (f"{self.model_name} on {where}; CTC loss, Adam (lr {c.learning_rate:g}, clip "
                f"norm {c.clipnorm:g}, cosine decay), batch {c.batch_size}, {c.steps} steps; "
                "metric: edit distance / reference length of greedy CTC decoding.")

    def dataset(self):
        if self._data is None:
            c = self.config
            if c.dataset == "digits":
                self._data = _synthetic_split(c)
            else:
                self._data = (librispeech_utterances(c.librispeech_dir, "train-clean-100", c),
                              librispeech_utterances(c.librispeech_dir, "dev-clean", c))
        return self._data

    def build_models(self):
        return [build_model(self.config)]

    def make_trainer(self, precision):
        c = self.config
        model = build_model(c)
        wrapped = common.wrap_for(model, precision)
        variables = wrapped.trainable_variables
        optimizer = common.adam(variables, c.learning_rate, decay_steps=c.steps,
                                warmup_steps=c.warmup_steps, clipnorm=c.clipnorm)

        @tf.function
        def train_step(feats, frames, labels, label_counts):
            with tf.GradientTape() as tape:
                logits = wrapped(feats, training=True)
                loss = tf.reduce_mean(tf.nn.ctc_loss(
                    labels, logits, label_counts, (frames + 1) // 2,
                    logits_time_major=False, blank_index=0))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        @tf.function
        def predict(feats):
            return wrapped(feats, training=False)

        return common.Trainer([model], [optimizer], train_step=train_step, predict=predict)

    def train_and_evaluate(self, trainer, seed):
        c = self.config
        (feats, frames, labels, label_counts), test = self.dataset()
        curve = common.Curve(max(c.steps // 40, 1))
        step = 0
        for step, index in enumerate(common.batch_indices(len(feats), c.batch_size, c.steps, seed), 1):
            curve.add(step, trainer.train_step(feats[index], frames[index], labels[index],
                                               label_counts[index]))
        curve.flush(step)
        result = self.evaluate(trainer.predict, test)
        return common.RunResult(result, {"CTC loss": curve.points})

    def evaluate(self, predict, test):
        feats, frames, labels, label_counts = test
        logits = common.predict_batched(predict, [feats], self.config.eval_batch_size)
        hypotheses = metrics.ctc_greedy_decode(logits, output_frames(frames), blank=0)
        references = [row[:n].tolist() for row, n in zip(labels, label_counts)]
        result = {"ler": metrics.error_rate(hypotheses, references)}
        if self.config.dataset == "librispeech":
            to_text = lambda seq: "".join(CHARACTERS[i - 1] for i in seq)  # noqa: E731
            result["wer"] = metrics.error_rate([to_text(h).split() for h in hypotheses],
                                               [to_text(r).split() for r in references])
        return result
