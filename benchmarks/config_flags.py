"""The flags of the `recsys.config` settings a benchmark exposes, and back.

A benchmark takes some of a config's settings from the command line (the
batch size and the synthetic stream's `vocab_scale`, but not `--data_path`,
which it generates itself). `define_config_flags(ConfigClass, names)`
defines just those flags, each made by `recsys.flags_lib` from its config
field (type, default, help text, bounds: nothing copied by hand);
`config_from_flags(ConfigClass, **values)` builds the config from them and
from the values the benchmark chooses; `flag_args(config)` turns a config
back into command-line flags, for a benchmark that runs `recsys.train`.

Example:

>>> define_config_flags(config.DataConfig, ["batch_size", "vocab_scale"])
>>> define_config_flags(config.ModelConfig)  # every field
>>> # ... after the flags are parsed:
>>> data_config = config_from_flags(config.DataConfig, eval_rows=4096)
>>> flag_args(data_config, ["batch_size", "eval_rows"])
['--batch_size=2048', '--eval_rows=4096']
"""

import dataclasses

from absl import flags

from recsys import config as config_lib
from recsys import flags_lib

# The flags defined here are the calling benchmark's key flags (its --help).
flags.disclaim_key_flags()


def _flag_names(config_class):
    return [config_lib.flag_name(f) for f in dataclasses.fields(config_class)]


def define_config_flags(config_class, names=None, flag_values=flags.FLAGS):
    """Defines the flags of some fields of a config (`recsys.flags_lib`'s flags).

    Args:
        config_class: one of `recsys.config.CONFIGS`.
        names: the flag names to define (`recsys.config.flag_name` of the
            fields, e.g. "data" for `DataConfig.source`); None for all. A
            list flag (`--deep_layers`) comes only with all of its config's.
        flag_values: where to define them.

    Raises:
        ValueError: for a name that is not a flag of `config_class`, or a
            list flag in a subset.
    """
    all_names = _flag_names(config_class)
    names = all_names if names is None else list(names)
    unknown = sorted(set(names) - set(all_names))
    if unknown:
        raise ValueError(f"{config_class.__name__} has no flags {unknown}; its flags are "
                         f"{', '.join(all_names)}.")
    made = flags.FlagValues()
    flags_lib.define_config_flags(config_class, made)
    if len(names) < len(all_names):
        lists = [name for name in names if isinstance(made[name].value, list)]
        if lists:  # config_from_flags parses them only with every field
            raise ValueError(f"Define all flags of {config_class.__name__} to have "
                             f"its list flags {lists}.")
    for name in names:
        flag_values[name] = made[name]  # the flag object, with its validators
        flags.declare_key_flag(name, flag_values)


def config_from_flags(config_class, flag_values=flags.FLAGS, **values):
    """The config of the parsed flags `define_config_flags` defined for it.

    Fields whose flag is not defined take `values`, else their default.

    Args:
        config_class: one of `recsys.config.CONFIGS`.
        flag_values: the parsed flags.
        **values: field name -> value, for the settings the benchmark
            chooses itself (they must not also be flags).

    Raises:
        ValueError: if the settings make an invalid config (naming the
            flag), or a value is given for a field that is a flag.
    """
    fields = dataclasses.fields(config_class)
    defined = [f for f in fields if config_lib.flag_name(f) in flag_values]
    clash = sorted(f.name for f in defined if f.name in values)
    if clash:
        raise ValueError(f"{clash} of {config_class.__name__} are flags of this program; "
                         "the program cannot also set them.")
    if len(defined) == len(fields):
        return flags_lib.config_from_flags(config_class, flag_values)
    from_flags = {f.name: flag_values[config_lib.flag_name(f)].value for f in defined}
    return config_class(**from_flags, **values)


def flag_args(config, names=None):
    """Command-line flags that set the fields of `config` (for `recsys.train`).

    Args:
        config: a `recsys.config` dataclass instance.
        names: the flag names to emit; None for every field. Unset fields
            (None) are left out: the program then uses its default, None.

    Returns:
        A list like `["--batch_size=512", "--deep_layers=128,64", "--nojit_compile"]`.
    """
    wanted = None if names is None else set(names)
    args = []
    for field in dataclasses.fields(config):
        name, value = config_lib.flag_name(field), getattr(config, field.name)
        if (wanted is not None and name not in wanted) or value is None:
            continue
        if isinstance(value, bool):
            args.append(f"--{'' if value else 'no'}{name}")
        elif isinstance(value, tuple):
            args.append(f"--{name}={','.join(map(str, value))}")
        else:
            args.append(f"--{name}={value}")
    return args
