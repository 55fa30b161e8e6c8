"""Generative models (the paper's DC-GAN and SR-GAN).

DC-GAN (Radford et al. 2016, scaled down): the generator maps 32-d Gaussian
noise through a Dense layer and stride-2 transposed convolutions to an image
in [-1, 1]; the discriminator is stride-2 convolutions with LeakyReLU and a
Dense logit. Non-saturating GAN loss with one-sided label smoothing (real
target 0.9, Salimans et al. 2016), Adam (beta_1 = 0.5), one discriminator and
one generator update per step, both from the same forward pass. Metrics, of
1,000 generated images under an FP32 ResNet trained by `paper.cnn` (the same
classifier for every precision): the Inception-style score
exp(E_x[KL(p(y|x) || p(y))]) (real held-out digits score about 9 of 10), and
the Fréchet distance of the classifier's pooled features to those of the real
held-out images (FID's formula; its floor, 1,000 real training images against
the same reference, is reported beside it). A sample grid is saved per
precision.

Laptop defaults (2,000 steps, lr 3e-4, label smoothing): measured in FP32 on
seeds 0-4, the Inception-style score was 5.8-6.4 and the Fréchet distance
4.6-7.8 (floor 0.16). With the earlier 400 steps at lr 5e-4 every run
collapsed (1.3-1.9); 2,000 steps at lr 2e-4 left seed 0 at 4.7, and 3,000
steps at 2e-4 reached 6.5-7.1 at 1.5x the cost.

SR-GAN (Ledig et al. 2017, scaled down): 2x super-resolution. The
low-resolution input is the 2x2 average pooling of the original; the generator
is an SRResNet (a convolution, residual blocks, a global skip, then
nearest-neighbour upsampling and convolutions, an alternative to SRGAN's
sub-pixel convolution); the discriminator is a strided convolutional
classifier. Generator loss: pixel MSE (the content loss; SRGAN's VGG feature
loss needs an ImageNet VGG) plus 0.01 x the adversarial loss. Metrics: PSNR
and SSIM of the super-resolved held-out images against the originals (SSIM
with a 7x7 Gaussian window on 8x8 digits, 11x11 at full scale), with bicubic
upsampling's beside them: a super-resolution network that does not beat
bicubic measures nothing. (On the digits nearest-neighbour upsampling has a
higher SSIM than bicubic, 0.651 vs 0.605, but a lower PSNR, 13.17 vs 13.47 dB;
both are listed under the table.) Laptop default: 600 steps, after which
every FP32 run beat bicubic's 13.47 dB on seeds 0-4 (15.1-16.3 dB, SSIM
0.79-0.84); at the earlier 200 steps two of five seeds lost to it (13.10 and
13.26 dB).

Laptop scale: scikit-learn's 8x8 digits (training split for training,
held-out split for SR-GAN's evaluation). Full scale (`--full
--imagenet_dir=...`): ImageNet at 64x64 for DC-GAN and 96x96 (from 48x48) for
SR-GAN, with the ImageNet ResNet-50 of `paper.cnn` as the Inception-score
classifier.

The generators use GroupNormalization by default rather than DC-GAN's and
SR-GAN's BatchNormalization (`--norm=batch` restores it): in single FP32 trials
on the digits (seed 0, lr 5e-4) DC-GAN reached an Inception-style score of 4.5
with GroupNormalization (600 steps) but 1.9 with BatchNormalization (500
steps), and without normalization it collapsed to a single mode (1.0-1.7).
The discriminators have no normalization.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from paper import cnn
from paper import common
from paper import data
from paper import metrics

L = keras.layers


def _bce(labels_value, logits):
    labels = tf.fill(tf.shape(logits), labels_value)
    return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def _images_and_labels(config, split, seed, training):
    """Training batches for the digits (numpy) or ImageNet (tf.data)."""
    if config.dataset == "digits":
        x_train, _, x_test, _ = data.digits()
        images = x_train if split == "train" else x_test
        if not training:
            return images
        return (images[index] for index in
                common.batch_indices(len(images), config.batch_size, config.steps, seed))
    ds, _ = data.imagenet_dataset(config.imagenet_dir, "train" if split == "train" else "validation",
                                  config.image_size, config.batch_size if training else 250,
                                  seed=seed, training=training)
    if training:
        return (np.asarray(x) for x, _ in ds.take(config.steps))
    return np.concatenate([np.asarray(x) for x, _ in ds.take(max(config.eval_samples // 250, 1))])


def image_grid(images, columns=8):
    """[N, H, W, C] images in [0, 1] -> one [rows*H, columns*W, C] grid."""
    images = np.clip(np.asarray(images), 0.0, 1.0)
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, c), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = image
    return grid


# ------------------------------------------------------------------ DC-GAN


@dataclasses.dataclass(frozen=True)
class DCGANConfig:
    dataset: str = "digits"          # "digits" or "imagenet"
    imagenet_dir: str = ""
    image_size: int = 8
    channels: int = 1
    base_size: int = 2               # generator's first feature map side
    noise_dim: int = 32
    g_width: int = 64                # channels after the Dense layer; halved per upsampling
    d_width: int = 32                # channels of the first discriminator conv; doubled per stage
    norm: str = "group"
    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-4
    beta_1: float = 0.5
    eval_samples: int = 1000
    real_label: float = 0.9          # D's target for real images (< 1: one-sided label smoothing)
    classifier_config: cnn.CNNConfig = cnn.CNNConfig()

    @property
    def model_name(self):
        return f"DC-GAN ({self.image_size}x{self.image_size}, {self.norm} norm in G)"


def dcgan_digits_config(**overrides):
    return dataclasses.replace(DCGANConfig(), **overrides)


def dcgan_tiny_config(**overrides):
    return dataclasses.replace(
        DCGANConfig(noise_dim=8, g_width=8, d_width=4, steps=3, batch_size=16, eval_samples=64,
                    classifier_config=cnn.tiny_config()),
        **overrides)


def dcgan_imagenet_config(imagenet_dir, **overrides):
    return dataclasses.replace(
        DCGANConfig(dataset="imagenet", imagenet_dir=imagenet_dir, image_size=64, channels=3,
                    base_size=4, noise_dim=100, g_width=512, d_width=64, steps=100_000,
                    batch_size=128, learning_rate=2e-4, real_label=1.0, eval_samples=50_000,
                    classifier_config=cnn.imagenet_config(imagenet_dir)),
        **overrides)


def build_generator(config):
    noise = keras.Input((config.noise_dim,), name="noise")
    x = L.Dense(config.base_size * config.base_size * config.g_width, name="project")(noise)
    x = L.Reshape((config.base_size, config.base_size, config.g_width), name="to_map")(x)
    x = L.LeakyReLU(0.2, name="project_act")(x)
    stages = int(round(math.log2(config.image_size // config.base_size)))
    for i in range(stages):
        filters = max(config.g_width // 2 ** (i + 1), 8)
        x = L.Conv2DTranspose(filters, 4, strides=2, padding="same", use_bias=config.norm == "none",
                              name=f"up{i}")(x)
        x = cnn.norm_layer(config.norm, filters, f"up{i}_norm")(x)
        x = L.LeakyReLU(0.2, name=f"up{i}_act")(x)
    x = L.Conv2D(config.channels, 3, padding="same", name="to_image")(x)
    image = L.Activation("tanh", name="tanh")(x)
    return keras.Model(noise, image, name="generator")


def build_discriminator(config, name="discriminator"):
    image = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    x, size, filters, i = image, config.image_size, config.d_width, 0
    while size > config.base_size:
        x = L.Conv2D(filters, 4, strides=2, padding="same", name=f"down{i}")(x)
        x = L.LeakyReLU(0.2, name=f"down{i}_act")(x)
        size, filters, i = size // 2, filters * 2, i + 1
    x = L.Flatten(name="flatten")(x)
    logit = L.Dense(1, name="logit")(x)
    return keras.Model(image, logit, name=name)


class DCGANExperiment(common.Experiment):
    name = "dcgan"
    family = "Generative (GAN)"
    metrics = (
        common.Metric("inception_score", "Inception-style score (ResNet classifier)", True, 3),
        common.Metric("frechet_distance", "Fréchet distance (ResNet features)", False, 3),
    )

    def __init__(self, config, context=None):
        super().__init__(config, context)
        self.model_name = config.model_name
        self._classifier = None
        self._reference_features = None

    def description(self):
        c = self.config
        return (f"{self.model_name} on {'the digits training split' if c.dataset == 'digits' else 'ImageNet'}"
                f"; noise {c.noise_dim}-d, Adam (lr {c.learning_rate:g}, beta_1 {c.beta_1}), batch "
                f"{c.batch_size}, {c.steps} steps; metrics of {c.eval_samples} samples under the "
                "FP32 ResNet classifier: exp(E[KL(p(y|x)||p(y))]), and the Fréchet distance of "
                "its pooled features to those of the real held-out images.")

    def classifier(self):
        if self._classifier is None:
            self._classifier = cnn.classifier(self.context, self.config.classifier_config)
        return self._classifier

    def reference_features(self):
        """Classifier features of the real held-out images (the Fréchet reference)."""
        if self._reference_features is None:
            real = _images_and_labels(self.config, "test", 0, training=False)
            self._reference_features = self.classifier().score(real)
        return self._reference_features

    def references(self):
        c = self.config
        probabilities, features = self.reference_features()
        # The floor of the Fréchet distance: real training images, as many as
        # the generated samples, against the same held-out reference.
        train = np.asarray(_images_and_labels(c, "train", 0, training=False))
        if len(train) < c.eval_samples:
            raise ValueError(f"{len(train)} training images cannot serve as a floor for "
                             f"{c.eval_samples} samples.")
        train = train[np.random.default_rng(0).permutation(len(train))[:c.eval_samples]]
        _, train_features = self.classifier().score(train)
        return [
            common.Reference("real held-out images", metrics.inception_score(probabilities),
                             "inception_score"),
            common.Reference(f"{c.eval_samples} real training images",
                             metrics.frechet_distance(train_features, features),
                             "frechet_distance"),
            common.Reference("classifier top-1 accuracy (held-out)", self.classifier().accuracy),
        ]

    def build_models(self):
        return [build_generator(self.config), build_discriminator(self.config)]

    def make_trainer(self, precision):
        c = self.config
        generator, discriminator = self.build_models()
        g, d = common.wrap_for(generator, precision), common.wrap_for(discriminator, precision)
        g_vars, d_vars = g.trainable_variables, d.trainable_variables
        g_opt = common.adam(g_vars, c.learning_rate, beta_1=c.beta_1)
        d_opt = common.adam(d_vars, c.learning_rate, beta_1=c.beta_1)

        @tf.function
        def train_step(real, noise):
            # Simultaneous updates from one forward pass (as in TensorFlow's
            # DC-GAN tutorial): both gradients see the same D and G.
            with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
                fake_logits = d(g(noise, training=True), training=True)
                d_loss = _bce(c.real_label, d(real, training=True)) + _bce(0.0, fake_logits)
                g_loss = _bce(1.0, fake_logits)
            g_grads = g_tape.gradient(g_loss, g_vars)
            d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
            g_opt.apply_gradients(zip(g_grads, g_vars))
            return d_loss, g_loss

        @tf.function
        def generate(noise):
            return g(noise, training=False)

        return common.Trainer([generator, discriminator], [g_opt, d_opt],
                              train_step=train_step, generate=generate)

    def train_and_evaluate(self, trainer, seed):
        c = self.config
        rng = np.random.default_rng([seed, 31337])
        d_curve, g_curve = common.Curve(max(c.steps // 40, 1)), common.Curve(max(c.steps // 40, 1))
        step = 0
        for step, real in enumerate(_images_and_labels(c, "train", seed, training=True), 1):
            real = np.asarray(real, np.float32) * 2.0 - 1.0
            noise = rng.standard_normal((len(real), c.noise_dim)).astype(np.float32)
            d_loss, g_loss = trainer.train_step(real, noise)
            d_curve.add(step, d_loss)
            g_curve.add(step, g_loss)
        d_curve.flush(step)
        g_curve.flush(step)
        eval_noise = np.random.default_rng([seed, 4242]).standard_normal(
            (c.eval_samples, c.noise_dim)).astype(np.float32)
        samples = (common.predict_batched(trainer.generate, [eval_noise], 250) + 1.0) / 2.0
        probabilities, features = self.classifier().score(np.clip(samples, 0.0, 1.0))
        _, reference_features = self.reference_features()
        return common.RunResult({"inception_score": metrics.inception_score(probabilities),
                                 "frechet_distance": metrics.frechet_distance(
                                     features, reference_features)},
                                {"discriminator loss": d_curve.points, "generator loss": g_curve.points},
                                extras={"samples": samples[:64]})

    def grids(self, runs):
        """[(file name, title, grid image)]: the first seed's samples per precision."""
        return [(f"dcgan_samples_{precision}.png",
                 f"DC-GAN samples, {common.label(precision)} (seed {runs[precision][0].seed})",
                 image_grid(results[0].extras["samples"]))
                for precision, results in runs.items()]


# ------------------------------------------------------------------ SR-GAN


@dataclasses.dataclass(frozen=True)
class SRGANConfig:
    dataset: str = "digits"
    imagenet_dir: str = ""
    image_size: int = 8              # high-resolution side
    channels: int = 1
    scale: int = 2
    g_width: int = 32
    residual_blocks: int = 2
    d_width: int = 32
    norm: str = "group"
    adversarial_weight: float = 1e-2
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    ssim_window: int = 7
    eval_samples: int = 0            # ImageNet: validation images to score

    @property
    def model_name(self):
        low = self.image_size // self.scale
        return (f"SR-GAN ({low}x{low} -> {self.image_size}x{self.image_size}, "
                f"{self.residual_blocks} residual blocks)")


def srgan_digits_config(**overrides):
    return dataclasses.replace(SRGANConfig(), **overrides)


def srgan_tiny_config(**overrides):
    return dataclasses.replace(
        SRGANConfig(g_width=4, residual_blocks=1, d_width=4, steps=3, batch_size=16), **overrides)


def srgan_imagenet_config(imagenet_dir, **overrides):
    return dataclasses.replace(
        SRGANConfig(dataset="imagenet", imagenet_dir=imagenet_dir, image_size=96, channels=3,
                    g_width=64, residual_blocks=16, d_width=64, adversarial_weight=1e-3,
                    steps=200_000, batch_size=16, learning_rate=1e-4, ssim_window=11,
                    eval_samples=10_000),
        **overrides)


def downsample(images, scale):
    """Average pooling by `scale`: the low-resolution inputs."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    return images.reshape(n, h // scale, scale, w // scale, scale, c).mean(axis=(2, 4))


def upsample(images, size, method="bicubic"):
    """`tf.image.resize` of [N, h, w, C] images to `size`, clipped to [0, 1] (the baselines)."""
    return np.clip(tf.image.resize(np.asarray(images, np.float32), size, method=method).numpy(),
                   0.0, 1.0)


def build_sr_generator(config):
    low = config.image_size // config.scale
    inputs = keras.Input((low, low, config.channels), name="low_resolution")
    x = L.Conv2D(config.g_width, 3, padding="same", name="head")(inputs)
    skip = x = L.LeakyReLU(0.2, name="head_act")(x)
    for i in range(config.residual_blocks):
        y = L.Conv2D(config.g_width, 3, padding="same", name=f"res{i}a")(x)
        y = cnn.norm_layer(config.norm, config.g_width, f"res{i}a_norm")(y)
        y = L.LeakyReLU(0.2, name=f"res{i}a_act")(y)
        y = L.Conv2D(config.g_width, 3, padding="same", name=f"res{i}b")(y)
        y = cnn.norm_layer(config.norm, config.g_width, f"res{i}b_norm")(y)
        x = L.Add(name=f"res{i}_add")([x, y])
    x = L.Conv2D(config.g_width, 3, padding="same", name="trunk_out")(x)
    x = L.Add(name="global_skip")([skip, x])
    for i in range(int(round(math.log2(config.scale)))):
        x = L.UpSampling2D(2, name=f"up{i}")(x)
        x = L.Conv2D(config.g_width, 3, padding="same", name=f"up{i}_conv")(x)
        x = L.LeakyReLU(0.2, name=f"up{i}_act")(x)
    outputs = L.Conv2D(config.channels, 3, padding="same", name="to_image")(x)
    return keras.Model(inputs, outputs, name="sr_generator")


def build_sr_discriminator(config):
    image = keras.Input((config.image_size, config.image_size, config.channels), name="image")
    x, filters, size, i = image, config.d_width, config.image_size, 0
    while size > 2:
        for stride in (1, 2):
            x = L.Conv2D(filters, 3, strides=stride, padding="same", name=f"conv{i}s{stride}")(x)
            x = L.LeakyReLU(0.2, name=f"conv{i}s{stride}_act")(x)
        size, filters, i = size // 2, min(filters * 2, 512), i + 1
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(2 * config.d_width, name="dense")(x)
    x = L.LeakyReLU(0.2, name="dense_act")(x)
    logit = L.Dense(1, name="logit")(x)
    return keras.Model(image, logit, name="sr_discriminator")


class SRGANExperiment(common.Experiment):
    name = "srgan"
    family = "Generative (GAN)"
    metrics = (common.Metric("psnr", "PSNR (dB)", True, 3), common.Metric("ssim", "SSIM", True, 4))

    def __init__(self, config, context=None):
        super().__init__(config, context)
        self.model_name = config.model_name
        self._test = None

    def description(self):
        c = self.config
        return (f"{self.model_name} on {'the digits' if c.dataset == 'digits' else 'ImageNet'} "
                f"(average-pooled inputs); loss: pixel MSE + {c.adversarial_weight:g} x adversarial; "
                f"Adam (lr {c.learning_rate:g}), batch {c.batch_size}, {c.steps} steps; metrics: "
                f"PSNR and SSIM ({c.ssim_window}x{c.ssim_window} Gaussian window) of the held-out "
                "images.")

    def test_images(self):
        if self._test is None:
            self._test = np.asarray(_images_and_labels(self.config, "test", 0, training=False))
        return self._test

    def references(self):
        high = self.test_images()
        low = downsample(high, self.config.scale)
        window = self.config.ssim_window
        bicubic, nearest = upsample(low, high.shape[1:3], "bicubic"), upsample(low, high.shape[1:3], "nearest")
        return [  # bicubic: the baseline a super-resolution network must beat, in the table
            common.Reference("bicubic upsampling", metrics.psnr(bicubic, high), "psnr"),
            common.Reference("bicubic upsampling", metrics.ssim(bicubic, high, window_size=window), "ssim"),
            common.Reference("nearest upsampling, PSNR (dB)", metrics.psnr(nearest, high)),
            common.Reference("nearest upsampling, SSIM", metrics.ssim(nearest, high, window_size=window)),
        ]

    def build_models(self):
        return [build_sr_generator(self.config), build_sr_discriminator(self.config)]

    def make_trainer(self, precision):
        c = self.config
        generator, discriminator = self.build_models()
        g, d = common.wrap_for(generator, precision), common.wrap_for(discriminator, precision)
        g_vars, d_vars = g.trainable_variables, d.trainable_variables
        g_opt = common.adam(g_vars, c.learning_rate, beta_1=c.beta_1, decay_steps=c.steps)
        d_opt = common.adam(d_vars, c.learning_rate, beta_1=c.beta_1, decay_steps=c.steps)

        @tf.function
        def train_step(low, high):
            # Simultaneous updates from one forward pass, as in DCGANExperiment.
            with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
                fake = g(low, training=True)
                fake_logits = d(fake, training=True)
                d_loss = _bce(1.0, d(high, training=True)) + _bce(0.0, fake_logits)
                content = tf.reduce_mean(tf.square(fake - high))
                adversarial = _bce(1.0, fake_logits)
                g_loss = content + c.adversarial_weight * adversarial
            g_grads = g_tape.gradient(g_loss, g_vars)
            d_opt.apply_gradients(zip(d_tape.gradient(d_loss, d_vars), d_vars))
            g_opt.apply_gradients(zip(g_grads, g_vars))
            return d_loss, content, adversarial

        @tf.function
        def upscale(low):
            return g(low, training=False)

        return common.Trainer([generator, discriminator], [g_opt, d_opt],
                              train_step=train_step, upscale=upscale)

    def train_and_evaluate(self, trainer, seed):
        c = self.config
        every = max(c.steps // 40, 1)
        curves = {name: common.Curve(every) for name in
                  ("content (MSE) loss", "adversarial loss", "discriminator loss")}
        step = 0
        for step, high in enumerate(_images_and_labels(c, "train", seed, training=True), 1):
            high = np.asarray(high, np.float32)
            d_loss, content, adversarial = trainer.train_step(downsample(high, c.scale), high)
            curves["discriminator loss"].add(step, d_loss)
            curves["content (MSE) loss"].add(step, content)
            curves["adversarial loss"].add(step, adversarial)
        for curve in curves.values():
            curve.flush(step)
        high = self.test_images()
        low = downsample(high, c.scale)
        sr = np.clip(common.predict_batched(trainer.upscale, [low], 250), 0.0, 1.0)
        return common.RunResult(
            {"psnr": metrics.psnr(sr, high), "ssim": metrics.ssim(sr, high, window_size=c.ssim_window)},
            {name: curve.points for name, curve in curves.items()},
            extras={"low": low[:16], "sr": sr[:16], "high": high[:16]})

    def grids(self, runs):
        """[(file name, title, grid image)]: rows are the low-resolution input
        (nearest-upsampled), each precision's output (first seed), the original."""
        first = next(iter(runs.values()))[0]
        size = first.extras["high"].shape[1]
        rows = [tf.image.resize(first.extras["low"], [size, size], "nearest").numpy()]
        rows += [results[0].extras["sr"] for results in runs.values()]
        rows.append(first.extras["high"])
        labels = ["input"] + [common.label(p) for p in runs] + ["original"]
        return [("srgan_samples.png", "SR-GAN 2x, rows: " + ", ".join(labels) + f" (seed {first.seed})",
                 image_grid(np.concatenate(rows), columns=len(first.extras["high"])))]
