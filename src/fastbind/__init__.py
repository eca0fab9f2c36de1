"""fastbind: fast binding of rare and novel classes in PyTorch.

The public API is deliberately small; everything else lives in submodules
(``fastbind.data``, ``fastbind.models``, ``fastbind.training``, ``fastbind.recipes``).
"""

__version__ = "0.1.0"

from fastbind.layers.fast_weights import FastWeightMemory
from fastbind.layers.hebbian_adaptive import HebbianAdaptiveSoftmax
from fastbind.layers.hebbian_softmax import HebbianSoftmax
from fastbind.memory import MbPA, NeuralCache, mix_log_probs

__all__ = [
    "FastWeightMemory", "HebbianAdaptiveSoftmax", "HebbianSoftmax", "MbPA", "NeuralCache", "mix_log_probs", "__version__",
]
