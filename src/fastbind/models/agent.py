"""Recurrent actor-critic agents for ``fastbind metarl``: an LSTM, or an LSTM with a Fast Weight Memory.

One step at a time (``step(x, state)``): the observation goes through a one-layer ``nn.LSTM``;
``arch=fwm`` writes the LSTM output into the fast weights and adds the read back to it
(``z + Linear(read)``, the authors' meta-RL agent); two linear heads give the action logits and
the state value. The fast weights are the library's
:class:`~fastbind.layers.fast_weights.FastWeightMemory`, stepped from an empty state and kept as
its writes (:meth:`~fastbind.layers.fast_weights.FastWeightMemory.step`): an episode of 30 steps
never forms the dense ``(B, s, r, t)`` tensor.

``fwm_variant="authors"`` is the authors' meta-RL FWM: the hops' relation keys are not squashed
by tanh and the write/read projections keep ``nn.Linear``'s bias initialisation.
``"library"`` is the layer as the language models use it (tanh keys, zero biases). Both use the
LSTM's default initialisation (no forget-gate offset) and the same write/read weight
initialisation, U(±√(6/(hidden+s))).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from fastbind.errors import BadSetting
from fastbind.layers.fast_weights import FastWeightMemory

__all__ = ["AgentConfig", "AgentOutput", "RecurrentAgent"]


@dataclass
class AgentConfig:
    """The ``agent`` section of ``fastbind metarl``."""

    arch: Literal["lstm", "fwm"] = "fwm"
    hidden: int = 32  # LSTM width
    fwm_size: int = 16  # s = r = t of the fast weights (arch=fwm)
    hops: int = 3  # sequential reads (arch=fwm)
    fwm_variant: Literal["authors", "library"] = "authors"

    def __post_init__(self) -> None:
        if self.arch not in ("lstm", "fwm"):
            raise BadSetting("arch", f"{self.arch!r} is not one of lstm, fwm")
        if self.fwm_variant not in ("authors", "library"):
            raise BadSetting("fwm_variant", f"{self.fwm_variant!r} is not one of authors, library")
        for name in ("hidden", "fwm_size", "hops"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")


class AgentOutput(NamedTuple):
    logits: torch.Tensor  # (B, actions)
    value: torch.Tensor  # (B,)
    state: tuple[Any, ...]


class RecurrentAgent(nn.Module):
    """An actor-critic agent that steps one observation at a time.

    Args:
        cfg: the agent's settings.
        inputs: observation size.
        actions: number of actions.

    Example::

        agent = RecurrentAgent(AgentConfig(arch="fwm", hidden=32, fwm_size=16), inputs=17, actions=3)
        state = agent.init_state(600)
        for k in range(30):
            logits, value, state = agent.step(x, state)      # x (600, 17)
    """

    def __init__(self, cfg: AgentConfig, inputs: int, actions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(inputs, cfg.hidden, batch_first=True)
        self.fwm = None
        if cfg.arch == "fwm":
            authors = cfg.fwm_variant == "authors"
            n = cfg.fwm_size
            self.fwm = FastWeightMemory(cfg.hidden, n, n, n, cfg.hops, residual=True,
                                        proj_bias="torch" if authors else "zero",
                                        read_keys="linear" if authors else "tanh")
        self.policy = nn.Linear(cfg.hidden, actions)
        self.value = nn.Linear(cfg.hidden, 1)

    def init_state(self, batch_size: int) -> tuple[Any, ...]:
        """Zeros: ``(h, c)`` each ``(1, B, hidden)``, and for ``arch=fwm`` an empty
        :class:`~fastbind.layers.fast_weights.FWMHistory`."""
        p = self.policy.weight
        h = p.new_zeros(1, batch_size, self.cfg.hidden)
        state: tuple[Any, ...] = (h, h.clone())
        if self.fwm is not None:
            state += (self.fwm.empty_history(batch_size, p.device, p.dtype),)
        return state

    def step(self, x: torch.Tensor, state: tuple[Any, ...]) -> AgentOutput:
        """One time step: observations ``x (B, inputs)`` → logits ``(B, actions)``, value ``(B,)``, new state."""
        z, (h, c) = self.lstm(x.unsqueeze(1), (state[0], state[1]))  # (B, 1, hidden)
        z = z.squeeze(1)
        new: tuple[Any, ...] = (h, c)
        if self.fwm is not None:
            z, history, _ = self.fwm.step(z, state[2])
            new += (history,)
        return AgentOutput(self.policy(z), self.value(z).squeeze(1), new)
