"""Evaluation-time memories over (hidden state, label) streams.

* :class:`NeuralCache` — Grave et al. (2016) continuous cache.
* :class:`MbPA` — Sprechmann et al. (2018) memory-based parameter adaptation of an output layer.
* :func:`mix_log_probs` — the probability-space mixture of a model with these memories.

Their state is explicit (``reset()``, ``state_dict()``), lives on the device of the stream, and is
never part of a model's checkpoint; a recipe whose memory is training state (the curriculum's
MbPA head, a continual learner's episodic memory) saves it beside the model. The store
(:class:`fastbind.memory.knn.RingStore`) keeps either the most recent entries or a reservoir
sample of every entry written.
"""

from fastbind.memory.mbpa import MbPA
from fastbind.memory.mix import mix_log_probs
from fastbind.memory.neural_cache import NeuralCache

__all__ = ["MbPA", "NeuralCache", "mix_log_probs"]
