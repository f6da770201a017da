"""Data for the training suite: the paper's image and tabular data sets, their manipulations, batching,
CIFAR augmentation, the Hessian sample, and character-level Shakespeare.

Data come from a local data root (`--data-dir` or HSPEC_DATA_DIR; layout in train/data/sources.py) or,
failing that, from tfds data already prepared in array_record format. With neither, `load` raises
DataNotFoundError at once, saying what to do.
"""

from train.data.batching import augment_cifar, augment_draws, batches, epoch_permutation, num_batches
from train.data.dataset import ENV_DATA_DIR, DataNotFoundError, Dataset, resolve_data_dir
from train.data.options import (
    HessianSample,
    apply_options,
    draw_random_labels,
    hessian_sample,
    subset_indices,
    symmetric_label_noise,
)
from train.data.sources import DATASETS, NUM_CLASSES, load, read_idx
from train.data.text import CharCorpus, char_corpus, load_shakespeare

__all__ = [
    "DATASETS", "NUM_CLASSES", "ENV_DATA_DIR", "Dataset", "DataNotFoundError", "HessianSample", "CharCorpus",
    "load", "apply_options", "hessian_sample", "epoch_permutation", "batches", "num_batches", "augment_cifar",
    "augment_draws", "load_shakespeare", "char_corpus", "resolve_data_dir", "read_idx", "subset_indices",
    "symmetric_label_noise", "draw_random_labels",
]
