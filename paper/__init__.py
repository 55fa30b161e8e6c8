"""The experiments of Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep
Learning Training", at laptop scale (and at full scale with `--full`).

Run `python -m paper --help`. One module per model family:

- `paper.cnn`: image classification (ResNet-20 on 8x8 digits; ResNet-50 on ImageNet);
- `paper.speech`: a DeepSpeech2-style CTC acoustic model (synthetic spoken digits; LibriSpeech);
- `paper.translation`: a GNMT-style LSTM encoder-decoder with attention (synthetic
  in-context translation; WMT);
- `paper.gan`: DC-GAN and SR-GAN (8x8 digits; ImageNet).

`paper.suite` runs them with paired seeds under FP32, BF16-RNE and BF16-TRUNC
(emulated with `tfbf16.wrap`), `paper.metrics` scores them (TensorFlow,
sacreBLEU and SciPy), and `paper.report` writes the table and plots.
"""
