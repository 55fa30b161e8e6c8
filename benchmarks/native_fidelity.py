r"""Does the emulation predict the hardware? Emulated RNE against native bfloat16,
layer by layer.

For every compute layer of two models, the layer is run on the same input
(what it receives in the FP32 model) with the same weights three ways: FP32,
emulated BF16-RNE (`tfbf16.BF16Wrapper(layer, "rne")`) and native bfloat16
(`BF16Wrapper(layer, "native")`: Keras' mixed_bfloat16 kernels, oneDNN on an
AVX512_BF16/AMX CPU). Per layer the table gives

- `emulated vs FP32`: ||emulated − FP32|| / ||FP32||, what BF16 changes;
- `native vs FP32`: ||native − FP32|| / ||FP32||;
- `native vs emulated`: ||native − emulated|| / ||FP32 − emulated||: 0 when
  the hardware computes exactly what the emulation computes, 1 when it is as
  far from the emulation as FP32 is;
- `bit-equal`: the fraction of outputs where native equals emulated exactly;
- the last two again against the emulation that also rounds each layer's
  output to BF16 (`BF16Policy(round_outputs=True)`): Keras' bfloat16 layers
  return bfloat16 outputs, which tfbf16's default emulation (the paper's:
  GEMM inputs only) does not round;

and the same for the whole model's output. Models: the study's DCN-V2
(tf_keras + tensorflow-recommenders, trained for --dcn_steps steps of the
synthetic stream) and a small Keras 3 CNN (trained for --cnn_epochs epochs on
scikit-learn's 8x8 digits). Writes `native_fidelity.json` and prints the
Markdown table.

Usage:

    python -m benchmarks.native_fidelity [--output_dir=benchmarks_output]
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tensorflow-recommenders needs it
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tfbf16  # noqa: E402
from tfbf16.utils import cli  # noqa: E402
from tfbf16.utils import files  # noqa: E402

from recsys import batches  # noqa: E402
from recsys import config  # noqa: E402
from recsys import model as model_lib  # noqa: E402
from recsys import train_step  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_integer("dcn_steps", 300, "Training steps of the DCN before measuring.",
                     lower_bound=0)
flags.DEFINE_integer("cnn_epochs", 5, "Training epochs of the CNN before measuring.",
                     lower_bound=0)
flags.DEFINE_integer("rows", 2048, "Input rows (DCN) or images (CNN) measured.",
                     lower_bound=1)
flags.DEFINE_string("output_dir", "benchmarks_output", "Where native_fidelity.json goes.")

# Layer kinds that compute (wrapped by tfbf16.wrap); the others stay FP32.
_COMPUTE = ("Dense", "Conv2D", "Cross", "Embedding", "BatchNormalization",
            "LayerNormalization", "GroupNormalization")


def _norm(x):
    return float(np.sqrt(np.sum(np.square(np.asarray(x, np.float64)))))


def compare_outputs(fp32, emulated, native, emulated_outputs):
    """The numbers of the table for one output (arrays of one shape)."""
    fp32, emulated, native, emulated_outputs = (
        np.asarray(t, np.float32) for t in (fp32, emulated, native, emulated_outputs))
    base = _norm(fp32) or 1.0

    def distance(reference):
        gap = _norm(fp32 - reference)
        return _norm(native - reference) / gap if gap else float("nan")

    return {
        "emulated_vs_fp32": _norm(emulated - fp32) / base,
        "native_vs_fp32": _norm(native - fp32) / base,
        "native_vs_emulated": distance(emulated),
        "bit_equal": float(np.mean(native == emulated)),
        "native_vs_emulated_outputs": distance(emulated_outputs),
        "bit_equal_outputs": float(np.mean(native == emulated_outputs)),
    }


_ROUND_OUTPUTS = tfbf16.BF16Policy(round_outputs=True)


def _flat(value):
    return [np.asarray(t) for t in tf.nest.flatten(value)]


def layer_by_layer(model, inputs, keras_module):
    """{layer name: compare_outputs} of every compute layer, on its FP32 input."""
    layers = [l for l in model.layers if type(l).__name__ in _COMPUTE]
    probe = keras_module.Model(model.inputs, [l.input for l in layers])
    layer_inputs = probe(inputs if isinstance(inputs, dict) else [inputs])
    rows = {}
    for layer, layer_input in zip(layers, layer_inputs):
        args = layer_input if isinstance(layer_input, (list, tuple)) else [layer_input]
        outputs = {"fp32": layer(*args)}
        for rounding in ("rne", "native"):
            wrapper = tfbf16.BF16Wrapper(layer, rounding=rounding)
            outputs[rounding] = wrapper(*args)
        outputs["rne_outputs"] = tfbf16.BF16Wrapper(
            layer, settings=_ROUND_OUTPUTS.resolve(layer, "rne", "rne"))(*args)
        rows[f"{layer.name} ({type(layer).__name__})"] = compare_outputs(
            *(np.concatenate([t.ravel() for t in _flat(outputs[k])])
              for k in ("fp32", "rne", "native", "rne_outputs")))
    whole = {rounding: tfbf16.wrap(model, rounding) for rounding in ("rne", "native")}
    whole["rne_outputs"] = tfbf16.wrap(model, "rne", policy=_ROUND_OUTPUTS)
    rows["whole model (output)"] = compare_outputs(
        model(inputs), *(whole[k](inputs) for k in ("rne", "native", "rne_outputs")))
    return rows


def dcn_rows():
    data = config.DataConfig()
    bundle = batches.make_bundle(data)
    model = model_lib.build_from_config(config.ModelConfig(), bundle.vocab_sizes, seed=0)
    step = train_step.make_train_step(model, tf.keras.optimizers.Adam(4e-3))
    for features, labels in bundle.train.take(FLAGS.dcn_steps):
        step(features, labels)
    features, _ = next(iter(bundle.eval.unbatch().batch(FLAGS.rows)))
    return layer_by_layer(model, features, tf.keras)


def cnn_rows():
    from sklearn import datasets
    digits = datasets.load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)
    y = digits.target
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv0"),
        keras.layers.BatchNormalization(name="bn0"),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.GlobalAveragePooling2D(name="pool"),
        keras.layers.Dense(64, activation="relu", name="dense0"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")
    model.compile(keras.optimizers.Adam(1e-2),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1400], y[:1400], epochs=FLAGS.cnn_epochs, batch_size=64, verbose=0)
    return layer_by_layer(model, x[1400:1400 + FLAGS.rows], keras)


def markdown(results):
    lines = ["| model | layer | emulated vs FP32 | native vs FP32 | native vs emulated "
             "| bit-equal | native vs emulated with outputs rounded | bit-equal |",
             "|" + " --- |" * 8]
    for model_name, rows in results.items():
        for layer, r in rows.items():
            lines.append(f"| {model_name} | {layer} | {r['emulated_vs_fp32']:.2e} | "
                         f"{r['native_vs_fp32']:.2e} | {r['native_vs_emulated']:.3f} | "
                         f"{100 * r['bit_equal']:.1f}% | "
                         f"{r['native_vs_emulated_outputs']:.3f} | "
                         f"{100 * r['bit_equal_outputs']:.1f}% |")
    return "\n".join(lines)


def main(argv):
    del argv
    hardware = tfbf16.bf16_hardware()
    print(f"Native bfloat16 hardware: {', '.join(hardware.devices) or 'none'}")
    results = {"DCN-V2 (tf_keras + TFRS)": dcn_rows(), "CNN (Keras 3)": cnn_rows()}
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    files.write_json(os.path.join(FLAGS.output_dir, "native_fidelity.json"),
                     {"hardware": list(hardware.devices), "layers": results})
    print(markdown(results))


if __name__ == "__main__":
    cli.run(main)
