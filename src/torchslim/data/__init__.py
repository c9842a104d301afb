"""Data sets as tensors: images (digits, MNIST, Fashion-MNIST, CIFAR-10, your own image folder) normalised, texts
(SST-2, SMS Spam, your own csv/tsv/jsonl) tokenized, plain text for language models (tinyshakespeare, your own .txt)
in blocks of character ids; tokenizers; tensor augmentations.

Example:
    >>> from torchslim.data import DATASETS, load_dataset
    >>> DATASETS.names()  # doctest: +NORMALIZE_WHITESPACE
    ['cifar10', 'csv', 'digits', 'fashion-mnist', 'image-folder', 'mnist', 'sms_spam', 'sst2', 'text-file',
     'tinyshakespeare']
    >>> load_dataset("digits").num_classes
    10
"""
from torchslim.data.augment import random_shift
from torchslim.data.datasets import DATASETS, DataBundle, RawDataset, load_dataset, resolve_data_root

# The text and image-folder modules register their data sets into DATASETS on import.
from torchslim.data.image_folder import IMAGE_EXTENSIONS  # noqa: E402
from torchslim.data.lm_text import CharVocabulary, TextBlocks  # noqa: E402
from torchslim.data.text import RawText, default_max_length, read_text_file  # noqa: E402
from torchslim.data.tokenizers import (  # noqa: E402
    CharTokenizer, HFTokenizer, Tokenizer, WordTokenizer, build_tokenizer, load_tokenizer,
)

__all__ = [
    "DATASETS", "DataBundle", "RawDataset", "RawText", "load_dataset", "random_shift", "resolve_data_root",
    "read_text_file", "default_max_length", "IMAGE_EXTENSIONS",
    "Tokenizer", "WordTokenizer", "CharTokenizer", "HFTokenizer", "build_tokenizer", "load_tokenizer",
    "CharVocabulary", "TextBlocks",
]
