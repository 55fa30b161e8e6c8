"""Command-line flags made from the `recsys.config` dataclasses.

`define_config_flags(ConfigClass)` defines one absl flag per field (its type,
default, help text, choices and lower bound come from the field);
`config_from_flags(ConfigClass)` builds the config from parsed flags, which
runs the config's own checks (a `ValueError` naming the flag). Programs build
their configs first thing in `main`, so every check runs before any work. `recsys.train` and `recsys.study` both
call `define_common_flags()`, then add their own flags.

Example:

>>> values = flags.FlagValues()
>>> define_config_flags(config.ModelConfig, values)
>>> values(["prog", "--deep_layers=32,16"])
>>> config_from_flags(config.ModelConfig, values).deep_layers
(32, 16)
"""

import dataclasses
import typing

from absl import flags

from recsys import config as config_lib


def _flag_type(hint):
    """(type, is Optional) of a field's annotation."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) is typing.Union and type(None) in args:
        return [a for a in args if a is not type(None)][0], True
    return hint, False


def _is_int_tuple(kind):
    return typing.get_origin(kind) is tuple


def _parse_int_list(name, values):
    try:
        parsed = tuple(int(v) for v in values)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or any(v < 1 for v in parsed):
        raise ValueError(f"--{name} must be a comma-separated list of positive integers, "
                         f"e.g. --{name}=256,128; got {','.join(map(str, values))!r}.")
    return parsed


def _field_value(field, kind, value):
    if _is_int_tuple(kind):
        return _parse_int_list(config_lib.flag_name(field), value)
    return value


def define_config_flags(config_class, flag_values=flags.FLAGS):
    """Defines a flag per field of `config_class`.

    Single-flag checks (types, choices, lower bounds) run when the flags are
    parsed; the config's own checks, which may involve several of its flags,
    run in `config_from_flags` (at the start of `main`, before any work), so
    that their message is one line.

    Args:
        config_class: one of `recsys.config.CONFIGS`.
        flag_values: where to define them.
    """
    hints = typing.get_type_hints(config_class)
    for field in dataclasses.fields(config_class):
        kind, _ = _flag_type(hints[field.name])
        name = config_lib.flag_name(field)
        meta = field.metadata
        common = {"flag_values": flag_values}
        if kind is bool:
            flags.DEFINE_bool(name, field.default, meta["help"], **common)
        elif kind is int:
            flags.DEFINE_integer(name, field.default, meta["help"],
                                 lower_bound=meta.get("lower_bound"), **common)
        elif kind is float:
            flags.DEFINE_float(name, field.default, meta["help"],
                               lower_bound=meta.get("lower_bound"), **common)
        elif kind is str and meta.get("choices"):
            flags.DEFINE_enum(name, field.default, meta["choices"], meta["help"], **common)
        elif kind is str:
            flags.DEFINE_string(name, field.default, meta["help"], **common)
        elif _is_int_tuple(kind):
            flags.DEFINE_list(name, [str(v) for v in field.default], meta["help"], **common)
        else:
            raise TypeError(f"No flag type for {config_class.__name__}.{field.name}: {kind}.")



def _build(config_class, hints, value_of):
    kwargs = {}
    for field in dataclasses.fields(config_class):
        kind, _ = _flag_type(hints[field.name])
        kwargs[field.name] = _field_value(field, kind, value_of(field))
    return config_class(**kwargs)


def config_from_flags(config_class, flag_values=flags.FLAGS):
    """The `config_class` instance of the parsed flags.

    Raises:
        ValueError: if the flags make an invalid config (naming the flag).
    """
    return _build(config_class, typing.get_type_hints(config_class),
                  lambda f: flag_values[config_lib.flag_name(f)].value)


def define_common_flags(flag_values=flags.FLAGS):
    """Defines the flags of every config and the run options train and study share."""
    for config_class in config_lib.CONFIGS:
        define_config_flags(config_class, flag_values)
    flags.DEFINE_bool("memory_check", True,
                      "Before training, estimate the memory of the model and optimizer "
                      "state and stop if it cannot fit in this machine's available memory.",
                      flag_values=flag_values)
    flags.DEFINE_bool("overwrite", False,
                      "Delete and retrain runs whose directory holds a run of other "
                      "settings or other input data (without it, such a directory is "
                      "refused; a finished run of the same settings is reused).",
                      flag_values=flag_values)


def configs_from_flags(flag_values=flags.FLAGS):
    """(DataConfig, ModelConfig, TrainConfig, DistributionConfig) of the parsed flags."""
    return tuple(config_from_flags(c, flag_values) for c in config_lib.CONFIGS)


def default_precision(flag_values=flags.FLAGS, name="precision"):
    """The compute precision flag's value; "native" on a TPU unless given."""
    if flag_values.strategy == "tpu" and not flag_values[name].present:
        return "native"
    return flag_values[name].value
