r"""Kalamkar et al. 2019's BF16-vs-FP32 study, one experiment per model family.

Every experiment is trained under FP32 and under BF16 emulated by tfbf16
(round-to-nearest-even and truncation) with paired seeds (same initial
weights and data order for every precision of a seed), then evaluated on
held-out data. The output directory gets the table (results.md,
results.json: mean per precision, the paired difference to FP32 with the
half-width of its 95% t interval over seeds, and the reference each metric is
read against), training curves per experiment, the GAN image grids and a plot
of the paired differences; the table is printed at the end.

Laptop scale (the default; nothing is downloaded):

    python -m paper
    python -m paper --experiments=cnn,dcgan --seeds=0,1,2 --steps=0.5
    python -m paper --precisions=fp32,rne,trunc,stochastic

- cnn:   ResNet-20 on scikit-learn's 8x8 digits, top-1 accuracy;
- ds2:   DeepSpeech2-style conv + BiGRU + CTC on synthetic spoken digits,
         label error rate of greedy CTC decoding;
- gnmt:  GNMT-style LSTM encoder-decoder with attention on a synthetic
         translation task, token accuracy (greedy and teacher-forced) and
         BLEU of greedy decoding;
- dcgan: DC-GAN on the digits, Inception-style score and Fréchet distance
         under the cnn network (references: real held-out digits, real
         training digits);
- srgan: SR-GAN 2x super-resolution of the digits, PSNR and SSIM (reference:
         bicubic upsampling).

`--steps` scales every experiment's number of training steps.

Full scale (`--full`): the same model code with the papers' sizes on the real
data sets, read from local directories (nothing is downloaded; a missing
directory is an error naming what was expected):

    python -m paper --full --experiments=cnn,dcgan,srgan --imagenet_dir=/data/imagenet
    python -m paper --full --experiments=ds2 --librispeech_dir=/data/LibriSpeech
    python -m paper --full --experiments=gnmt --wmt_dir=/data/wmt16_en_de --wmt_langs=en,de

- --imagenet_dir: `train/<wnid>/*.JPEG` + `validation/<wnid>/*.JPEG` image
  folders, or `train-?????-of-01024` + `validation-?????-of-00128` TFRecords
  (`image/encoded`, `image/class/label` 1..1000) as written by TensorFlow's
  build_imagenet_data.py. cnn: ResNet-50 at 224x224; dcgan: 64x64; srgan:
  48x48 -> 96x96.
- --librispeech_dir: the LibriSpeech root with `train-clean-100/` and
  `dev-clean/` (FLAC needs `pip install soundfile`, or put .wav files beside
  the .flac ones). 80 log-mels, 3 BiGRU-512, characters; CER and WER.
- --wmt_dir: `train.<src>`, `train.<tgt>`, `test.<src>`, `test.<tgt>` (e.g.
  newstest2014 as test), tokenized, one sentence per line. 4+4 LSTM-1024.

Full-scale step counts follow the original recipes (e.g. 450k steps of batch
256 for ResNet-50).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from paper import common  # noqa: E402
from paper import suite  # noqa: E402
from tfbf16.study import precision as precision_lib  # noqa: E402
from tfbf16.utils import cli  # noqa: E402

FLAGS = flags.FLAGS

flags.DEFINE_list("experiments", list(suite.EXPERIMENTS),
                  f"Experiments to run, from {', '.join(suite.EXPERIMENTS)}.")
flags.DEFINE_list("seeds", [str(seed) for seed in suite.SEEDS],
                  "Seeds; each gives one paired run per precision (2 or more for intervals).")
flags.DEFINE_list("precisions", list(common.PRECISIONS),
                  f"Precisions, from {', '.join(precision_lib.COMPUTE_PRECISIONS)}; must include fp32.")
flags.DEFINE_float("steps", 1.0, "Multiplies every experiment's number of training steps.")
flags.DEFINE_string("output_dir", "paper_output", "Where results.md/json and the plots go.")
flags.DEFINE_enum("norm", "group", ["group", "batch", "none"],
                  "Normalization in the ResNet and the GAN generators: GroupNormalization "
                  "(the default: no batch statistics, the same computation in training and "
                  "evaluation), BatchNormalization (the original models'), or none.")
flags.DEFINE_bool("full", False, "Use the real data sets and the papers' model sizes.")
flags.DEFINE_string("imagenet_dir", "", "ImageNet directory (--full: cnn, dcgan, srgan).")
flags.DEFINE_string("librispeech_dir", "", "LibriSpeech root directory (--full: ds2).")
flags.DEFINE_string("wmt_dir", "", "Directory of WMT parallel text (--full: gnmt).")
flags.DEFINE_list("wmt_langs", ["en", "de"], "Source and target language suffixes of --wmt_dir.")
flags.DEFINE_bool("tiny", False, "A few steps of tiny models (a smoke test, ~1 min).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.full and FLAGS.tiny:
        raise app.UsageError("--full and --tiny exclude each other.")
    if len(FLAGS.wmt_langs) != 2:
        raise app.UsageError("--wmt_langs needs two languages, e.g. en,de.")
    _, markdown = suite.run_suite(
        experiments=FLAGS.experiments, seeds=FLAGS.seeds, precisions=FLAGS.precisions,
        output_dir=FLAGS.output_dir, step_scale=FLAGS.steps, full=FLAGS.full,
        tiny=FLAGS.tiny, norm=FLAGS.norm, imagenet_dir=FLAGS.imagenet_dir,
        librispeech_dir=FLAGS.librispeech_dir, wmt_dir=FLAGS.wmt_dir,
        wmt_langs=FLAGS.wmt_langs)
    print()
    print(markdown)
    print(f"Written to {FLAGS.output_dir}/ (results.md, results.json, plots).")


if __name__ == "__main__":
    cli.run(main)
