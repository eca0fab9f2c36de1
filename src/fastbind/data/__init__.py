"""Data: word vocabularies, language-modelling corpora and a synthetic long-tail corpus.

Main entry point::

    from fastbind.data import load_corpus
    corpus = load_corpus("synthetic", seed=0)          # generated, with corpus.entropy
    corpus = load_corpus("wikitext-2")                 # ~/.cache/fastbind/wikitext-2, downloaded if missing
    corpus = load_corpus("../shared/data/ptb")         # a folder; format detected from file names
    corpus.train, corpus.valid, corpus.test            # (N,) int64 token ids, <eos> at line ends
    corpus.train_counts                                # (len(vocab),) int64, for frequency buckets
    omni = load_omniglot("../shared/data/omniglot")    # Omniglot archives -> 28 x 28 uint8 tensors
    babi = load_babi("../shared/data/babi")            # bAbI stories for catbAbI streams
"""

from fastbind.data.babi import BabiData, CatbAbIEvalStream, CatbAbIStream, load_babi
from fastbind.data.corpora import (
    SPLITS,
    Corpus,
    default_cache_dir,
    detect_format,
    load_corpus,
    read_gutenberg,
    read_ptb,
    read_wikitext,
)

# The download() function stays in fastbind.data.download: exporting it here would shadow
# the submodule of the same name.
from fastbind.data.download import DownloadError, fetch_dataset
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
    "Omniglot",
    "SyntheticConfig",
    "SyntheticLanguage",
    "Vocabulary",
    "default_cache_dir",
    "detect_format",
    "fetch_dataset",
    "generate_synthetic",
    "load_babi",
    "load_corpus",
    "load_omniglot",
    "read_gutenberg",
    "read_ptb",
    "read_wikitext",
    "token_nll",
]
