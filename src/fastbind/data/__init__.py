"""Data: word vocabularies, language-modelling corpora and a synthetic long-tail corpus.

Main entry point::

    from fastbind.data import load_corpus
    corpus = load_corpus("synthetic", seed=0)          # generated, with corpus.entropy
    corpus = load_corpus("wikitext-2")                 # ~/.cache/fastbind/wikitext-2, downloaded if missing
    corpus = load_corpus("../shared/data/ptb")         # a folder; format detected from file names
    corpus.train, corpus.valid, corpus.test            # (N,) int64 token ids, <eos> at line ends
    corpus.train_counts                                # (len(vocab),) int64, for frequency buckets
    omni = load_omniglot("../shared/data/omniglot")    # Omniglot archives -> 28 x 28 uint8 tensors
    fmnist = load_image_set("fashion-mnist")           # MNIST-format IDX files, downloaded if missing
    babi = load_babi("../shared/data/babi")            # bAbI stories for catbAbI streams

Modules, in import order: ``vocab``, ``corpus`` (the Corpus type), ``cache`` (data and cache
folders, the one encoded-data cache), ``download``, ``linefiles`` (WikiText/PTB and the
streaming line encoder), ``gutenberg``, ``synthetic``, ``corpora`` (``load_corpus`` and the
named sets), ``omniglot``, ``idx`` (MNIST-format image sets), ``babi``, ``stream``, ``statistics``.
"""

from fastbind.data.babi import BabiData, CatbAbIEvalStream, CatbAbIStream, load_babi
from fastbind.data.cache import default_cache_dir, default_data_dir
from fastbind.data.corpora import detect_format, load_corpus
from fastbind.data.corpus import SPLITS, Corpus

# The download() function stays in fastbind.data.download: exporting it here would shadow
# the submodule of the same name.
from fastbind.data.download import DownloadError, fetch_dataset
from fastbind.data.gutenberg import read_gutenberg
from fastbind.data.idx import ImageSet, load_image_set, read_idx, read_image_set
from fastbind.data.linefiles import read_ptb, read_wikitext
from fastbind.data.omniglot import Omniglot, load_omniglot
from fastbind.data.synthetic import SyntheticConfig, SyntheticLanguage, token_nll
from fastbind.data.synthetic import generate as generate_synthetic
from fastbind.data.vocab import Vocabulary

__all__ = [
    "SPLITS",
    "BabiData",
    "CatbAbIEvalStream",
    "CatbAbIStream",
    "Corpus",
    "DownloadError",
    "ImageSet",
    "Omniglot",
    "SyntheticConfig",
    "SyntheticLanguage",
    "Vocabulary",
    "default_cache_dir",
    "default_data_dir",
    "detect_format",
    "fetch_dataset",
    "generate_synthetic",
    "load_babi",
    "load_corpus",
    "load_image_set",
    "load_omniglot",
    "read_gutenberg",
    "read_idx",
    "read_image_set",
    "read_ptb",
    "read_wikitext",
    "token_nll",
]
