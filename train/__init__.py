"""Training suite for Tang et al. (ICML 2025): data, models, optimizers, loop, presets, the `python -m train` CLI."""
