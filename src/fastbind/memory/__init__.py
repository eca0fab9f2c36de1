"""Evaluation-time memories over (hidden state, label) streams.

* :class:`NeuralCache` — Grave et al. (2016) continuous cache.
* :class:`MbPA` — Sprechmann et al. (2018) memory-based parameter adaptation of an output layer.
* :class:`KNNLM` — Khandelwal et al. (2020) kNN-LM: a memory-mapped training-set datastore, its
  exact (tiled) or FAISS search, and :func:`knn_log_prob` / :func:`knn_distribution` over the
  neighbour lists (``faiss`` is imported only when an index is built or searched).
* :func:`mix_log_probs` — the probability-space mixture of a model with these memories.

Their state is explicit (``reset()``, ``state_dict()``), lives on the device of the stream, and is
never part of a model's checkpoint; a recipe whose memory is training state (the curriculum's
MbPA head, a continual learner's episodic memory) saves it beside the model. The kNN-LM's
datastore is instead a folder on disk, memory-mapped read-only. The store
(:class:`fastbind.memory.knn.RingStore`) keeps either the most recent entries or a reservoir
sample of every entry written.
"""

from fastbind.memory.knn_lm import (
    KNNLM,
    DatastoreWriter,
    knn_distribution,
    knn_log_prob,
    recall_at_k,
)
from fastbind.memory.mbpa import MbPA
from fastbind.memory.mix import mix_log_probs
from fastbind.memory.neural_cache import NeuralCache

__all__ = [
    "KNNLM", "DatastoreWriter", "MbPA", "NeuralCache", "knn_distribution", "knn_log_prob", "mix_log_probs",
    "recall_at_k",
]
