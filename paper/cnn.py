"""Image classification (the paper's AlexNet/ResNet-50 family): a ResNet.

Laptop scale: a ResNet-20-style network (He et al. 2016, CIFAR variant: a 3x3
stem, three stages of three basic blocks, 16/32/64 channels) on scikit-learn's
8x8 digits; top-1 accuracy on the held-out 30%.

Full scale (`--full --imagenet_dir=...`): the same builder with the ImageNet
configuration, ResNet-50 (7x7/2 stem and 3x3/2 max pooling, bottleneck blocks
[3, 4, 6, 3], 64..2048 channels) at 224x224; top-1 accuracy on ImageNet's
validation set.

Normalization: GroupNormalization by default (`norm="group"`), BatchNormalization
(as in the original ResNets) with `norm="batch"`. GroupNormalization computes
the same thing in training and inference and has no moving statistics, so the
FP32/BF16 comparison does not depend on batch statistics. (It was first chosen
because tfbf16's Keras 3 wrapper did not pass `training` to a wrapped
BatchNormalization, which then never used batch statistics in BF16 runs; tfbf16
commit 8b7e8b1 fixed that, and `norm="batch"` now trains in BF16 too: 0.980
top-1 for RNE vs 0.983 for FP32, one seed, measured here.)
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from paper import common
from paper import data

L = keras.layers


@dataclasses.dataclass(frozen=True)
class CNNConfig:
    """A ResNet and its training set-up."""
    dataset: str = "digits"          # "digits" or "imagenet"
    imagenet_dir: str = ""
    image_size: int = 8
    channels: int = 1
    classes: int = 10
    stem: str = "cifar"              # "cifar" (3x3 conv) or "imagenet" (7x7/2 + max pool)
    block: str = "basic"             # "basic" (ResNet-20) or "bottleneck" (ResNet-50)
    stage_blocks: tuple = (3, 3, 3)
    width: int = 16
    norm: str = "group"              # "group", "batch" or "none"
    steps: int = 120
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 12
    eval_batch_size: int = 256
    eval_examples: int = 0           # 0: the whole held-out set

    @property
    def model_name(self):
        depth = sum(self.stage_blocks) * (3 if self.block == "bottleneck" else 2) + 2
        return f"ResNet-{depth} ({self.block} blocks, {self.norm} norm, {self.image_size}x{self.image_size})"


def digits_config(**overrides):
    return dataclasses.replace(CNNConfig(), **overrides)


def tiny_config(**overrides):
    """A few-second configuration for tests."""
    return dataclasses.replace(CNNConfig(stage_blocks=(1, 1), width=4, steps=3, batch_size=16,
                                         warmup_steps=0, eval_batch_size=128), **overrides)


def imagenet_config(imagenet_dir, **overrides):
    """ResNet-50 on ImageNet at 224x224 (90 epochs of batch 256)."""
    return dataclasses.replace(
        CNNConfig(dataset="imagenet", imagenet_dir=imagenet_dir, image_size=224, channels=3,
                  classes=1000, stem="imagenet", block="bottleneck", stage_blocks=(3, 4, 6, 3),
                  width=64, steps=450_000, batch_size=256, learning_rate=1e-3,
                  warmup_steps=5_000, eval_batch_size=250),
        **overrides)


def norm_layer(kind, channels, name):
    if kind == "group":
        return L.GroupNormalization(groups=max(1, min(32, channels // 4)), name=name)
    if kind == "batch":
        return L.BatchNormalization(name=name)
    if kind == "none":
        return L.Identity(name=name)
    raise ValueError(f"Unknown normalization {kind!r}; use group, batch or none.")


def _conv_norm(x, filters, kernel, stride, norm, name, relu=True):
    x = L.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                 kernel_initializer="he_normal", name=name + "_conv")(x)
    x = norm_layer(norm, filters, name + "_norm")(x)
    return L.ReLU(name=name + "_relu")(x) if relu else x


def build_resnet(config, name="resnet"):
    """A ResNet classifier (logits) for `config`; Add layers, no keras.ops nodes."""
    inputs = keras.Input((config.image_size, config.image_size, config.channels), name="images")
    if config.stem == "imagenet":
        x = _conv_norm(inputs, config.width, 7, 2, config.norm, "stem")
        x = L.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    else:
        x = _conv_norm(inputs, config.width, 3, 1, config.norm, "stem")
    for stage, blocks in enumerate(config.stage_blocks):
        filters = config.width * 2 ** stage
        out_filters = filters * (4 if config.block == "bottleneck" else 1)
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            prefix = f"s{stage}b{block}"
            if config.block == "bottleneck":
                y = _conv_norm(x, filters, 1, 1, config.norm, prefix + "a")
                y = _conv_norm(y, filters, 3, stride, config.norm, prefix + "b")
                y = _conv_norm(y, out_filters, 1, 1, config.norm, prefix + "c", relu=False)
            else:
                y = _conv_norm(x, filters, 3, stride, config.norm, prefix + "a")
                y = _conv_norm(y, filters, 3, 1, config.norm, prefix + "b", relu=False)
            if stride != 1 or x.shape[-1] != out_filters:
                x = _conv_norm(x, out_filters, 1, stride, config.norm, prefix + "proj", relu=False)
            x = L.Add(name=prefix + "_add")([x, y])
            x = L.ReLU(name=prefix + "_out")(x)
    x = L.GlobalAveragePooling2D(name="pool")(x)
    outputs = L.Dense(config.classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _cross_entropy(labels, logits):
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))


class CNNExperiment(common.Experiment):
    name = "cnn"
    family = "Image classification (CNN)"
    metrics = (common.Metric("top1", "top-1 accuracy", True, 4),)

    def __init__(self, config, context=None):
        super().__init__(config, context)
        self.model_name = config.model_name
        if config.dataset == "imagenet":
            data.imagenet_layout(config.imagenet_dir)  # fail early if missing

    def description(self):
        c = self.config
        where = ("scikit-learn digits, 1,257 training / 540 held-out images"
                 if c.dataset == "digits" else f"ImageNet from {c.imagenet_dir}")
        return (f"{self.model_name} on {where}; Adam (lr {c.learning_rate:g}, warm-up "
                f"{c.warmup_steps}, cosine decay), batch {c.batch_size}, {c.steps} steps; "
                "metric: top-1 accuracy of the held-out images.")

    def build_models(self):
        return [build_resnet(self.config)]

    def make_trainer(self, precision):
        model = build_resnet(self.config)
        wrapped = common.wrap_for(model, precision)
        variables = wrapped.trainable_variables
        optimizer = common.adam(variables, self.config.learning_rate, decay_steps=self.config.steps,
                                warmup_steps=self.config.warmup_steps)

        @tf.function
        def train_step(images, labels):
            with tf.GradientTape() as tape:
                loss = _cross_entropy(labels, wrapped(images, training=True))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss

        @tf.function
        def predict(images):
            return wrapped(images, training=False)

        return common.Trainer([model], [optimizer], wrapped=wrapped, train_step=train_step,
                              predict=predict, precision=precision)

    def _batches(self, seed):
        c = self.config
        if c.dataset == "digits":
            x_train, y_train, _, _ = data.digits()
            for index in common.batch_indices(len(x_train), c.batch_size, c.steps, seed):
                yield x_train[index], y_train[index]
        else:
            ds, _ = data.imagenet_dataset(c.imagenet_dir, "train", c.image_size, c.batch_size,
                                          seed=seed, training=True)
            yield from ds.take(c.steps)

    def _eval_set(self):
        c = self.config
        if c.dataset == "digits":
            _, _, x_test, y_test = data.digits()
            return [(x_test, y_test)]
        ds, _ = data.imagenet_dataset(c.imagenet_dir, "validation", c.image_size,
                                      c.eval_batch_size, training=False)
        return ds.take(c.eval_examples // c.eval_batch_size) if c.eval_examples else ds

    def evaluate_accuracy(self, predict):
        correct = total = 0
        for images, labels in self._eval_set():
            logits = common.predict_batched(predict, [np.asarray(images)], self.config.eval_batch_size)
            correct += int(np.sum(np.argmax(logits, -1) == np.asarray(labels)))
            total += len(logits)
        return correct / total

    def train_and_evaluate(self, trainer, seed):
        curve = common.Curve(max(self.config.steps // 40, 1))
        step = 0
        for step, (images, labels) in enumerate(self._batches(seed), 1):
            curve.add(step, trainer.train_step(images, labels))
        curve.flush(step)
        accuracy = self.evaluate_accuracy(trainer.predict)
        if trainer.precision == "fp32" and "classifier" not in self.context:
            # The Inception-score classifier of the GAN experiments.
            self.context["classifier"] = (self.config, trainer.models[0].get_weights(), accuracy)
        return common.RunResult({"top1": accuracy}, {"train loss": curve.points})


@dataclasses.dataclass(frozen=True)
class Classifier:
    """A trained FP32 ResNet used to score generated images.

    Attributes:
        score: maps [N, H, W, C] images in [0, 1] to ([N, classes] class
            probabilities, for the Inception-style score; [N, d] features,
            the globally average-pooled last stage, for the Fréchet
            distance).
        accuracy: its top-1 accuracy on the held-out images.
    """
    score: object
    accuracy: float


def classifier(context, config):
    """The FP32 ResNet classifier that scores generated images (`Classifier`).

    Uses the first FP32 network that the CNN experiment trained in this
    process (`context["classifier"]`), or trains one (FP32, seed 0) with
    `config` when the CNN experiment did not run.
    """
    if "classifier" not in context:
        experiment = CNNExperiment(config, context)
        experiment.run("fp32", 0, experiment.initial_weights(0))
    config, weights, accuracy = context["classifier"]
    model = build_resnet(config, name="classifier")
    model.set_weights(weights)
    scorer = keras.Model(model.inputs, [model.outputs[0], model.get_layer("pool").output])
    size = config.image_size

    @tf.function
    def probabilities_and_features(images):
        if images.shape[1] != size:
            images = tf.image.resize(images, [size, size])
        logits, features = scorer(images, training=False)
        return tf.concat([tf.nn.softmax(logits), features], axis=-1)

    def score(images):
        both = common.predict_batched(probabilities_and_features,
                                      [np.asarray(images, np.float32)], config.eval_batch_size)
        return both[:, :config.classes], both[:, config.classes:]

    return Classifier(score=score, accuracy=accuracy)
