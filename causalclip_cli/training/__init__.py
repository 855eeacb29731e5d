"""Training, evaluation and calibration of heads: feature extraction and its caches (safetensors and the
Parquet feature store with `FeatureSet`), the training loop (`trainer`), balanced sampling and per-domain
calibration over kinds of images (`domains`), metrics, plots and the `train` / `eval` / `calibrate`
experiments. It may import `inputs`, `evidence`, `model` and the shared base; it never imports `scanning`
or `robustness`.
"""
