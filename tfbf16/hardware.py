"""`tfbf16.bf16_hardware`: does this machine compute bfloat16 natively?"""

import dataclasses

import tensorflow as tf

_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclasses.dataclass(frozen=True)
class BF16Hardware:
    """What native bfloat16 compute this machine offers.

    Attributes:
        available: True if any device computes bfloat16 natively.
        devices: human-readable descriptions of those devices.
    """

    available: bool
    devices: tuple

    def __bool__(self):
        return self.available


def _cpu_flags(cpuinfo_path="/proc/cpuinfo"):
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_hardware(cpuinfo_path="/proc/cpuinfo"):
    """Tells whether this machine has native bfloat16 compute.

    Looks for TPUs, GPUs of compute capability 8.0 or newer (Ampere+), and
    CPUs with AVX512_BF16 or AMX-BF16 (which oneDNN uses for bfloat16 matmuls
    and convolutions in TensorFlow).

    Args:
        cpuinfo_path: where to read the CPU flags (Linux).

    Returns:
        A `BF16Hardware`, truthy when native bfloat16 is available.

    Example:

    >>> hw = tfbf16.bf16_hardware()
    >>> rounding = "native" if hw else "rne"
    """
    devices = []
    for tpu in tf.config.list_logical_devices("TPU"):
        devices.append(f"TPU {tpu.name}")
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        if capability and tuple(capability) >= (8, 0):
            devices.append(f"GPU {gpu.name} (compute capability {capability[0]}.{capability[1]})")
    flags = _cpu_flags(cpuinfo_path) & set(_CPU_FLAGS)
    if flags:
        devices.append(f"CPU ({', '.join(sorted(flags))})")
    return BF16Hardware(bool(devices), tuple(devices))
