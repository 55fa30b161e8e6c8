"""tf_keras layers read their weights through attributes; this makes those
reads give the emulated call's rounded values.

Each float variable that a layer inside a wrapped layer holds as an
attribute (`self.kernel`) is replaced, once, by a `RoundedOnRead` view of it:
tf_keras' own `AutoCastVariable` (the view tf_keras' mixed precision puts in
the same attributes, delegating everything to the variable and casting
reads under a bfloat16 layer policy), whose reads return the value the
active emulation frame gives the variable while a wrapper's call is in
progress on the reading thread (`tfbf16.emulation.context.rounded_value`),
and the variable's own value otherwise. The layer's weight lists, its
checkpoint dependencies and the optimizer keep the variables themselves.
"""

import tensorflow as tf
from tf_keras.src.distribute import distributed_training_utils
from tf_keras.src.mixed_precision import autocast_variable

from tfbf16.emulation import context


class RoundedOnRead(autocast_variable.AutoCastVariable):
    """A variable whose reads give the active emulation frame's value."""

    def _frame_value(self):
        return context.rounded_value(self._variable)

    def value(self):
        frame_value = self._frame_value()
        return super().value() if frame_value is None else frame_value

    def read_value(self):
        frame_value = self._frame_value()
        return super().read_value() if frame_value is None else frame_value

    def sparse_read(self, indices, name=None):
        frame_value = self._frame_value()
        if frame_value is None:
            return super().sparse_read(indices, name=name)
        return tf.gather(frame_value, indices, name=name)

    def gather_nd(self, indices, name=None):
        frame_value = self._frame_value()
        if frame_value is None:
            return super().gather_nd(indices, name=name)
        return tf.gather_nd(frame_value, indices, name=name)

    def _dense_var_to_tensor(self, dtype=None, name=None, as_ref=False):
        frame_value = self._frame_value()
        if frame_value is None or as_ref:
            return super()._dense_var_to_tensor(dtype=dtype, name=name, as_ref=as_ref)
        if dtype is not None and not tf.as_dtype(dtype).is_compatible_with(frame_value.dtype):
            raise ValueError(
                f"Incompatible type conversion requested to type {tf.as_dtype(dtype).name} "
                f"for a variable read as {frame_value.dtype.name}."
            )
        return frame_value

    def __repr__(self):
        return f"<tfbf16 RoundedOnRead of {self._variable!r}>"


_distributed_classes = {}


def rounded_on_read(variable):
    """A `RoundedOnRead` view of `variable` (of its class too, if distributed)."""
    if not distributed_training_utils.is_distributed_variable(variable):
        return RoundedOnRead(variable)
    cls = _distributed_classes.get(type(variable))
    if cls is None:
        # Like tf_keras' AutoCastDistributedVariable: still an instance of the
        # distributed variable's class, which tf.distribute requires.
        cls = type(f"RoundedOnRead{type(variable).__name__}",
                   (RoundedOnRead, type(variable)), {})
        _distributed_classes[type(variable)] = cls
    return cls(variable)


def intercept_reads(layers, keep_plain):
    """Replaces the float variable attributes of `layers` by views (once).

    Args:
        layers: the layer objects whose attributes to replace.
        keep_plain: `keep_plain(layer, variable)` -> True to leave an
            attribute as it is.

    Returns:
        The ids of the variables whose attribute reads are now intercepted.
    """
    intercepted = set()
    for layer in layers:
        for name, value in list(vars(layer).items()):
            if isinstance(value, RoundedOnRead):
                intercepted.add(id(value._variable))
                continue
            if (not isinstance(value, tf.Variable)
                    or isinstance(value, autocast_variable.AutoCastVariable)
                    or not value.dtype.is_floating or keep_plain(layer, value)):
                continue
            object.__setattr__(layer, name, rounded_on_read(value))
            intercepted.add(id(value))
    return intercepted
