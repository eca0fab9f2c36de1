"""The ``transformers.Trainer`` callback that memorizes once per optimizer step."""

from __future__ import annotations

from typing import Any

from torch import nn
from transformers import TrainerCallback

from fastbind.hf.head import HebbianMemorizer

__all__ = ["HebbianCallback"]


class HebbianCallback(TrainerCallback):
    """Memorize the output layer's inputs of each optimizer step right after ``optimizer.step()``.

    The model's output layer must be a Hebbian one (:func:`~fastbind.hf.hebbian_head`). The
    callback installs a :class:`~fastbind.hf.HebbianMemorizer` on the model, which records the
    training-mode forwards of every micro-batch (evaluation forwards are not recorded), and
    calls its :meth:`~fastbind.hf.HebbianMemorizer.memorize` in ``on_optimizer_step``: once per
    optimizer step, whatever ``gradient_accumulation_steps`` is::

        from fastbind.hf import HebbianCallback, hebbian_head
        hebbian_head(model, new_tokens=new_ids)
        trainer = Trainer(model=model, args=args, train_dataset=ds, callbacks=[HebbianCallback(model)])
        trainer.train()

    ``center`` as in :class:`~fastbind.hf.HebbianMemorizer`. ``memorizer`` holds the hooks; ``memorizer.steps`` counts the memorize calls.
    """

    def __init__(self, model: nn.Module, *, center: bool = True) -> None:
        self.memorizer = HebbianMemorizer(model, center=center)

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.memorizer.memorize()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.memorizer.discard()  # a run stopped between micro-batches leaves nothing behind
