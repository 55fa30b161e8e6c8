"""The back-end registry: which Keras an object belongs to, and its parts."""

import ast
import os

import keras
import pytest
import tf_keras

import tfbf16
from tfbf16 import backends

FLAVOURS = {"keras3": keras, "tf_keras": tf_keras}
PACKAGE = os.path.dirname(tfbf16.__file__)


def test_both_kerases_are_registered_keras3_first():
    assert [b.name for b in backends.registered_backends()] == ["keras3", "tf_keras"]
    assert backends.get_backend("tf_keras").keras is tf_keras
    assert backends.get_backend("keras3").package == "tfbf16.backends.keras3"
    with pytest.raises(ValueError, match="No tfbf16 back end named 'keras2'"):
        backends.get_backend("keras2")


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_backend_of_layers_models_and_optimizers(flavour):
    K = FLAVOURS[flavour]
    backend = backends.get_backend(flavour)
    model = K.Sequential([K.Input((3,)), K.layers.Dense(2)])
    for obj in (K.layers.Dense(2), model, K.optimizers.Adam(), tfbf16.wrap(model),
                tfbf16.BF16Wrapper(K.layers.Dense(2))):
        assert backends.backend_of(obj) is backend, obj
        assert backends.is_keras_object(obj)
    assert backend.is_layer(model) and not backend.is_layer(K.optimizers.Adam())
    assert backend.callback_class is K.callbacks.Callback
    assert issubclass(backend.optimizer_class, K.optimizers.Optimizer)
    wrapper = tfbf16.BF16Wrapper(K.layers.Dense(2))
    assert isinstance(wrapper, backend.wrapper_class)
    assert isinstance(wrapper, tfbf16.BF16Wrapper) and isinstance(wrapper, K.layers.Layer)
    assert type(wrapper).__name__ == "Dense"
    assert type(wrapper).__qualname__ == "BF16Wrapper[Dense]"


def test_tf_keras_legacy_optimizers_belong_to_tf_keras():
    legacy = tf_keras.optimizers.legacy.Adam()
    assert backends.backend_of(legacy).name == "tf_keras"


def test_anything_else_is_refused_with_a_type_error():
    for obj in (object(), "dense", None, keras.Variable(1.0)):
        assert not backends.is_keras_object(obj)
        with pytest.raises(TypeError, match="Keras 3 .* or tf_keras layers, models"):
            backends.backend_of(obj)


def test_registry_imports_nothing_of_tfbf16_nor_keras():
    """So that any module can dispatch through it without an import cycle."""
    with open(os.path.join(PACKAGE, "backends", "registry.py")) as f:
        tree = ast.parse(f.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"importlib", "threading"}, imported
