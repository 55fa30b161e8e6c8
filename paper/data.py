"""Image data: scikit-learn's 8x8 digits (laptop scale) and ImageNet (full scale).

- `digits()`: the 1,797 8x8 handwritten digits that scikit-learn ships (no
  download), scaled to [0, 1], split once into a stratified training set and
  a held-out test set (30%, fixed split).
- `imagenet_dataset(directory, split, ...)`: a `tf.data.Dataset` of
  (image in [0, 1], label) from an ImageNet directory in one of two layouts:

  1. image folders: `<dir>/train/<wnid>/*.JPEG` and `<dir>/validation/<wnid>/*.JPEG`
     (class index = position of the folder name in the sorted list of
     `<dir>/train/`'s folders);
  2. TFRecord shards as written by TensorFlow's `build_imagenet_data.py`:
     `<dir>/train-00000-of-01024`, ..., `<dir>/validation-00000-of-00128`,
     with features `image/encoded` (JPEG) and `image/class/label` (1..1000).

  Nothing is downloaded; a missing or unrecognized directory raises
  `DataNotFoundError` saying what was expected.
"""

import functools
import glob
import os

import numpy as np
import tensorflow as tf

IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


class DataNotFoundError(FileNotFoundError):
    """A `--full` data set is not where the flags say (or in another layout)."""


@functools.lru_cache(maxsize=None)
def digits(test_fraction=0.3, split_seed=0):
    """scikit-learn's digits as ([N,8,8,1] float32 in [0,1], int32 labels), split.

    Returns:
        (x_train, y_train, x_test, y_test); the split is stratified and the
        same for every call with the same arguments.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[..., None]
    labels = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_fraction, random_state=split_seed, stratify=labels)
    for array in (x_train, y_train, x_test, y_test):
        array.setflags(write=False)
    return x_train, y_train, x_test, y_test


def _require_dir(directory, flag):
    if not directory:
        raise DataNotFoundError(f"--full needs {flag}: the directory of the data set.")
    if not os.path.isdir(directory):
        raise DataNotFoundError(f"{flag}={directory!r} is not a directory.")
    return directory


def imagenet_classes(directory):
    """Sorted class folder names of `<directory>/train` (image-folder layout)."""
    train = os.path.join(directory, "train")
    return sorted(d for d in os.listdir(train) if os.path.isdir(os.path.join(train, d)))


def imagenet_layout(directory):
    """'folders' or 'tfrecords', or raises DataNotFoundError."""
    _require_dir(directory, "--imagenet_dir")
    if glob.glob(os.path.join(directory, "train-*-of-*")):
        return "tfrecords"
    if os.path.isdir(os.path.join(directory, "train")) and imagenet_classes(directory):
        return "folders"
    raise DataNotFoundError(
        f"--imagenet_dir={directory!r} holds neither train/<class>/*.JPEG image folders "
        "nor train-*-of-* TFRecord shards (with validation/ or validation-*-of-* beside them).")


def _folder_files(directory, split):
    classes = imagenet_classes(directory)
    files, labels = [], []
    for index, name in enumerate(classes):
        class_dir = os.path.join(directory, split, name)
        if not os.path.isdir(class_dir):
            continue
        for file in sorted(os.listdir(class_dir)):
            if file.lower().endswith(IMAGE_EXTENSIONS):
                files.append(os.path.join(class_dir, file))
                labels.append(index)
    if not files:
        raise DataNotFoundError(f"No images under {os.path.join(directory, split)}/<class>/.")
    return files, labels, len(classes)


def _decode_and_crop(encoded, image_size):
    """JPEG/PNG bytes -> central 87.5% crop resized to image_size, in [0, 1]."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image = tf.image.convert_image_dtype(image, tf.float32)
    image = tf.image.central_crop(image, 0.875)
    return tf.image.resize(image, [image_size, image_size], antialias=True)


def imagenet_dataset(directory, split, image_size, batch_size, seed=0, training=True):
    """Batches of (images [B, S, S, 3] in [0, 1], labels) from ImageNet.

    Args:
        directory: the `--imagenet_dir` (see the module docstring).
        split: "train" or "validation".
        image_size: output side S.
        batch_size: batch size (the last partial batch is dropped when
            training, kept otherwise).
        seed: shuffling seed, so that every precision of a seed reads the
            same order.
        training: shuffle, random horizontal flip and repeat forever.

    Returns:
        (dataset, number of classes).
    """
    layout = imagenet_layout(directory)
    if layout == "folders":
        files, labels, classes = _folder_files(directory, split)
        ds = tf.data.Dataset.from_tensor_slices((files, labels))
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(lambda f, l: (_decode_and_crop(tf.io.read_file(f), image_size), l),
                    num_parallel_calls=tf.data.AUTOTUNE)
    else:
        shards = sorted(glob.glob(os.path.join(directory, f"{split}-*-of-*")))
        if not shards:
            raise DataNotFoundError(f"No {split}-*-of-* shards in {directory!r}.")
        classes = 1000
        ds = tf.data.Dataset.from_tensor_slices(shards)
        if training:
            ds = ds.shuffle(len(shards), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=4, deterministic=True)
        if training:
            ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=True)
        features = {
            "image/encoded": tf.io.FixedLenFeature([], tf.string),
            "image/class/label": tf.io.FixedLenFeature([], tf.int64),
        }

        def parse(record):
            example = tf.io.parse_single_example(record, features)
            label = tf.cast(example["image/class/label"], tf.int32) - 1
            return _decode_and_crop(example["image/encoded"], image_size), label

        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        ds = ds.repeat().enumerate().map(
            lambda index, example: (tf.image.stateless_random_flip_left_right(
                example[0], tf.stack([tf.constant(seed, tf.int64), index])), example[1]),
            num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True
    ds = ds.with_options(options).batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE), classes
