"""Data sets (digits, MNIST, Fashion-MNIST, CIFAR-10) as normalised tensors, and tensor augmentations.

Example:
    >>> from torchslim.data import DATASETS, load_dataset
    >>> DATASETS.names()
    ['cifar10', 'digits', 'fashion-mnist', 'mnist']
    >>> load_dataset("digits").num_classes
    10
"""
from torchslim.data.augment import random_shift
from torchslim.data.datasets import DATASETS, DataBundle, RawDataset, load_dataset, resolve_data_root

__all__ = ["DATASETS", "DataBundle", "RawDataset", "load_dataset", "random_shift", "resolve_data_root"]
