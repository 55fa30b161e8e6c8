"""Tests of `benchmarks.config_flags`: a benchmark's flags made from `recsys.config`."""

from absl import flags
import pytest

from benchmarks import config_flags
from recsys import config
from recsys import flags_lib


def _parsed(*args, define=()):
    values = flags.FlagValues()
    for config_class, names in define:
        config_flags.define_config_flags(config_class, names, values)
    values(["prog", *args])
    return values


def test_a_subset_of_flags_as_recsys_defines_them():
    values = _parsed(define=[(config.DataConfig, ["batch_size", "vocab_scale"])])
    assert sorted(values) == ["batch_size", "vocab_scale"]
    reference = flags.FlagValues()
    flags_lib.define_config_flags(config.DataConfig, reference)
    for name in ("batch_size", "vocab_scale"):
        assert values[name].default == reference[name].default
        assert values[name].help == reference[name].help


def test_bounds_are_checked_when_parsing():
    with pytest.raises(flags.IllegalFlagValueError, match="batch_size"):
        _parsed("--batch_size=0", define=[(config.DataConfig, ["batch_size"])])


def test_config_from_a_subset_and_chosen_values():
    values = _parsed("--batch_size=64", "--data_seed=3",
                     define=[(config.DataConfig, ["batch_size", "data_seed"])])
    data_config = config_flags.config_from_flags(config.DataConfig, values, eval_rows=100)
    assert data_config == config.DataConfig(batch_size=64, data_seed=3, eval_rows=100)


def test_config_checks_run():
    values = _parsed(define=[(config.DataConfig, ["batch_size"])])
    with pytest.raises(ValueError, match="--data_path is required"):
        config_flags.config_from_flags(config.DataConfig, values, source="criteo")


def test_a_value_cannot_override_a_flag():
    values = _parsed(define=[(config.DataConfig, ["batch_size"])])
    with pytest.raises(ValueError, match="batch_size"):
        config_flags.config_from_flags(config.DataConfig, values, batch_size=8)


def test_unknown_and_list_flags_in_a_subset_are_refused():
    with pytest.raises(ValueError, match="has no flags.*source"):
        config_flags.define_config_flags(config.DataConfig, ["source"], flags.FlagValues())
    with pytest.raises(ValueError, match="deep_layers"):
        config_flags.define_config_flags(config.ModelConfig, ["deep_layers"],
                                         flags.FlagValues())


@pytest.mark.parametrize("value", [
    config.ModelConfig(embedding_dim=4, projection_dim=16, deep_layers=(32, 16),
                       structure="parallel"),
    config.ModelConfig(num_cross_layers=3, deep_layers=()),
    config.DataConfig(source="criteo", data_path="/data/a.tsv,/data/b.tsv", eval_rows=10,
                      num_buckets=1000, strict=True),
    config.TrainConfig(jit_compile=True, tensorboard=False, learning_rate=1e-3),
])
def test_flag_args_round_trip(value):
    """A config written as flags and parsed back is the same config."""
    args = config_flags.flag_args(value)
    values = _parsed(*args, define=[(type(value), None)])
    assert config_flags.config_from_flags(type(value), values) == value


def test_flag_args_of_some_fields():
    value = config.DataConfig(batch_size=512, vocab_scale=0.5)
    assert config_flags.flag_args(value, ["batch_size", "vocab_scale"]) == [
        "--batch_size=512", "--vocab_scale=0.5"]
    assert config_flags.flag_args(value, ["data"]) == ["--data=synthetic"]
