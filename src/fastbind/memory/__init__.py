"""Evaluation-time memories over (hidden state, label) streams.

* :class:`NeuralCache` — Grave et al. (2016) continuous cache.
* :class:`MbPA` — Sprechmann et al. (2018) memory-based parameter adaptation of an output layer.
* :func:`mix_log_probs` — the probability-space mixture of a model with these memories.

Their state is explicit (``reset()``), lives on the device of the stream, and never enters a
checkpoint.
"""

from fastbind.memory.mbpa import MbPA
from fastbind.memory.mix import mix_log_probs
from fastbind.memory.neural_cache import NeuralCache

__all__ = ["MbPA", "NeuralCache", "mix_log_probs"]
