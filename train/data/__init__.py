"""Data for the training suite: the paper's image and tabular data sets, their manipulations, batching,
CIFAR augmentation, the Hessian sample, and character-level Shakespeare.

Data come from a local data root (`--data-dir`, else HSPEC_DATA_DIR, else ~/.cache/hspec/data; layout in
train/data/sources.py), else from tfds data already prepared in array_record format, else from a download
into the data root (train/data/download.py; HSPEC_DATA_MIRROR replaces the public hosts). The errors share
the base DataError, whose message names the file or URL, the problem and the fix: DataNotFoundError (also a
FileNotFoundError) and its subclass DownloadError, and DataCorruptError for a file that is present but
cannot be read.
"""

from train.data.batching import augment_cifar, augment_draws, batches, epoch_permutation, num_batches
from train.data.dataset import (
    ENV_DATA_DIR,
    DataCorruptError,
    DataError,
    DataNotFoundError,
    Dataset,
    DownloadError,
    default_data_dir,
    resolve_data_dir,
    without_data_root,
)
from train.data.download import ENV_MIRROR, Checksum
from train.data.options import (
    HessianSample,
    apply_options,
    draw_random_labels,
    hessian_sample,
    subset_indices,
    symmetric_label_noise,
)
from train.data.sources import DATASETS, NUM_CLASSES, load, read_cifar_binary, read_idx
from train.data.text import CharCorpus, char_corpus, load_shakespeare

__all__ = [
    "DATASETS", "NUM_CLASSES", "ENV_DATA_DIR", "ENV_MIRROR", "Dataset", "DataError", "DataNotFoundError",
    "DownloadError", "DataCorruptError", "Checksum", "HessianSample", "CharCorpus", "default_data_dir",
    "read_cifar_binary", "load", "apply_options", "hessian_sample", "epoch_permutation", "batches", "num_batches", "augment_cifar",
    "augment_draws", "load_shakespeare", "char_corpus", "resolve_data_dir", "read_idx", "subset_indices",
    "symmetric_label_noise", "draw_random_labels", "without_data_root",
]
