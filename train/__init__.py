"""Training suite for Tang et al. (ICML 2025): data, models, optimizers, the loop, presets and the `python -m train` CLI."""
