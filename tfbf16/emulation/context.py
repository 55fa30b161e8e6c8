"""Which emulated call is running on this thread, and what it rounds.

A `BF16Wrapper` shares its inner layer objects with the unwrapped FP32
model. What makes a call of those objects emulated is therefore not the
objects themselves but the call in progress: the wrapper pushes an
`EmulationFrame` for the duration of its call, on the calling thread only,
and the hooks installed on the inner objects (`tfbf16.emulation.hooks`)
emulate while a frame that governs them is active, and behave exactly like
the original methods otherwise (an FP32 call, or another thread's call).
Nothing shared is modified per call, so concurrent calls (MirroredStrategy's
replica threads tracing one model, an FP32 and a BF16 model traced at once)
cannot see each other's state.

The hooks act while Python runs the layer's code, so frames work eagerly, in
`tf.function` traces, XLA and `tf.while_loop` bodies alike.
"""

import contextlib
import dataclasses
import threading

_local = threading.local()


@dataclasses.dataclass(frozen=True)
class EmulationFrame:
    """One emulated call in progress.

    Attributes:
        settings: the wrapper's `LayerRounding`, with the runtime rounding
            codes (tensors) in place of the names.
        members: ids of the layer objects the call governs (the inner layer
            and everything inside it).
        weights: `{id(variable): rounded tensor}`, the values that reads of
            those variables return during the call (back ends whose layers
            read variables through attributes use it).
    """

    settings: object
    members: frozenset
    weights: dict = dataclasses.field(default_factory=dict)


def _stack():
    stack = getattr(_local, "frames", None)
    if stack is None:
        stack = _local.frames = []
    return stack


@contextlib.contextmanager
def emulating(frame):
    """Makes `frame` active on this thread for a with-block.

    Args:
        frame: an `EmulationFrame`.

    Yields:
        `frame`.
    """
    stack = _stack()
    stack.append(frame)
    try:
        yield frame
    finally:
        stack.pop()


def frame_for(obj):
    """The innermost active frame that governs `obj` on this thread, or None."""
    for frame in reversed(getattr(_local, "frames", ())):
        if id(obj) in frame.members:
            return frame
    return None


def rounded_value(variable):
    """The value the active frame gives `variable`, or None (read it as it is)."""
    for frame in reversed(getattr(_local, "frames", ())):
        value = frame.weights.get(id(variable))
        if value is not None:
            return value
    return None
