"""Builds the selected experiments and runs them with paired seeds.

`run_suite(...)` is what `python -m paper` calls; tests call it with
`tiny=True`.
"""

import dataclasses
import time

from paper import cnn
from paper import common
from paper import gan
from paper import report
from paper import speech
from paper import translation

#: Experiment names, in run order (cnn first: its FP32 network is the
#: Inception-score classifier of dcgan).
EXPERIMENTS = ("cnn", "ds2", "gnmt", "dcgan", "srgan")
#: The default seeds: five paired runs per precision.
SEEDS = (0, 1, 2, 3, 4)


def _scaled(config, scale):
    steps = common.scaled_steps(config.steps, scale)
    changes = {"steps": steps}
    if hasattr(config, "warmup_steps"):
        changes["warmup_steps"] = min(config.warmup_steps, steps // 5)
    return dataclasses.replace(config, **changes)


def make_configs(full=False, tiny=False, step_scale=1.0, norm="group", imagenet_dir="",
                 librispeech_dir="", wmt_dir="", wmt_langs=("en", "de")):
    """{experiment name: config} for the laptop, tiny (tests) or full scale."""
    if tiny:
        configs = {"cnn": cnn.tiny_config(), "ds2": speech.tiny_config(),
                   "gnmt": translation.tiny_config(), "dcgan": gan.dcgan_tiny_config(),
                   "srgan": gan.srgan_tiny_config()}
    elif full:
        configs = {"cnn": cnn.imagenet_config(imagenet_dir),
                   "ds2": speech.librispeech_config(librispeech_dir),
                   "gnmt": translation.wmt_config(wmt_dir, tuple(wmt_langs)),
                   "dcgan": gan.dcgan_imagenet_config(imagenet_dir),
                   "srgan": gan.srgan_imagenet_config(imagenet_dir)}
    else:
        configs = {"cnn": cnn.digits_config(), "ds2": speech.digits_config(),
                   "gnmt": translation.synthetic_config(), "dcgan": gan.dcgan_digits_config(),
                   "srgan": gan.srgan_digits_config()}
    configs = {name: _scaled(config, step_scale) for name, config in configs.items()}
    for name in ("cnn", "dcgan", "srgan"):
        configs[name] = dataclasses.replace(configs[name], norm=norm)
    # The Inception-score classifier is the CNN experiment's network.
    configs["dcgan"] = dataclasses.replace(configs["dcgan"], classifier_config=configs["cnn"])
    return configs


_CLASSES = {"cnn": cnn.CNNExperiment, "ds2": speech.SpeechExperiment,
            "gnmt": translation.TranslationExperiment, "dcgan": gan.DCGANExperiment,
            "srgan": gan.SRGANExperiment}


def make_experiments(names, configs, context=None):
    """The experiments of `names` (validated; full-scale data checked now)."""
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"Unknown experiments {unknown}; choose from {EXPERIMENTS}.")
    context = {} if context is None else context
    ordered = [n for n in EXPERIMENTS if n in names]
    return [_CLASSES[name](configs[name], context) for name in ordered]


def run_experiment(experiment, seeds, precisions, log=print):
    """Every (seed, precision) run of one experiment, paired by seed."""
    start = time.time()
    runs = {p: [] for p in precisions}
    for seed in seeds:
        weights = experiment.initial_weights(seed)
        for precision in precisions:
            result = experiment.run(precision, seed, weights)
            runs[precision].append(result)
            values = ", ".join(f"{k}={v:.4f}" for k, v in result.metrics.items())
            log(f"[{experiment.name}] seed {seed} {common.label(precision):<11} "
                f"{values}  ({result.seconds:.1f} s, CPU {result.cpu_seconds:.1f} s)")
    references = experiment.references()
    return report.ExperimentResult(experiment, list(seeds), runs, references, time.time() - start)


def run_suite(experiments=EXPERIMENTS, seeds=SEEDS, precisions=common.PRECISIONS,
              output_dir="paper_output", step_scale=1.0, full=False, tiny=False, norm="group",
              imagenet_dir="", librispeech_dir="", wmt_dir="", wmt_langs=("en", "de"),
              log=print):
    """Runs the experiments and writes the report.

    Returns:
        (list of `report.ExperimentResult`, the Markdown report).
    """
    start, cpu_start = time.time(), time.process_time()
    precisions = common.check_precisions(precisions)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Give at least one seed.")
    configs = make_configs(full=full, tiny=tiny, step_scale=step_scale, norm=norm,
                           imagenet_dir=imagenet_dir, librispeech_dir=librispeech_dir,
                           wmt_dir=wmt_dir, wmt_langs=wmt_langs)
    built = make_experiments(list(experiments), configs)
    results = []
    for experiment in built:
        log(f"[{experiment.name}] {experiment.description()}")
        results.append(run_experiment(experiment, seeds, precisions, log=log))
    settings = {"experiments": [e.name for e in built], "seeds": seeds, "precisions": precisions,
                "step_scale": step_scale, "full": full, "tiny": tiny, "norm": norm,
                "imagenet_dir": imagenet_dir, "librispeech_dir": librispeech_dir,
                "wmt_dir": wmt_dir, "wmt_langs": list(wmt_langs)}
    markdown = report.write(results, precisions, output_dir, settings, time.time() - start,
                            time.process_time() - cpu_start)
    return results, markdown
