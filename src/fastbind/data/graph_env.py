"""Random-graph POMDPs for meta-reinforcement learning (Schlag et al. 2021, section 4.2).

An environment is a directed graph of ``islands`` nodes and ``transports`` means of transport:
from each island each transport leads to at most one island (``succ[a, i]``, ``-1`` where the
island does not offer it). The agent sees where it is and where it should go, never the graph;
it has to find the way by trial, remember it within the episode, and use it again.

Graphs (:func:`sample_graphs`) follow the authors' generator, batched over graphs:

1. every island gets one way out: a random transport to a random other island;
2. then, for each island ``j`` in turn, one way in: a random free ``(island, transport)`` slot
   of another island is pointed at ``j``;
3. graphs that are not strongly connected are drawn again.

A batch of environments (:class:`GraphEnv`) steps as tensor operations over the whole batch,
with its random draws passed in as a tensor, so a per-environment loop can replay the same
draws (:func:`reference_step` is that loop, for the tests). Each step:

* an action the island does not offer costs ``penalty``;
* reaching the goal earns ``reward`` and re-draws the goal (another island than the old goal)
  and the position (another island than the new goal);
* every unrewarded step counts; after more than ``timeout`` of them since the last time-out,
  goal and position are re-drawn the same way and the previous action is reset to "none"
  (reaching the goal does not reset the count).

Observations (:meth:`GraphEnv.observe`), ``2 · islands + transports + 4`` numbers: the goal and
the position one-hot, the previous action one-hot, a constant 1, the step's fraction of the
episode and the previous reward. ``reward_input="authors"`` reproduces the authors' layout,
where the reward input is always 0 and the "none" action lands on the constant (one slot stays
unused); ``"true"`` feeds the previous step's reward and gives "none" that unused slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

__all__ = ["DRAWS", "GraphEnv", "GraphState", "graph_codes", "reference_step", "sample_graphs",
           "split_graphs", "strongly_connected"]

DRAWS = 2  # uniform draws per environment and step: the re-drawn goal and position


def strongly_connected(succ: torch.Tensor) -> torch.Tensor:
    """``(G,)`` bool: whether every island of each graph ``succ (G, A, N)`` reaches every other."""
    G, _, N = succ.shape
    adj = torch.zeros(G, N, N + 1, dtype=torch.float32)
    adj.scatter_(2, torch.where(succ < 0, N, succ).transpose(1, 2), 1.0)  # (G, from, to); column N = none
    reach = ((adj[:, :, :N] + torch.eye(N)) > 0).float()
    for _ in range(max(1, (N - 1).bit_length())):  # squaring doubles the path length covered
        reach = (torch.bmm(reach, reach) > 0).float()
    return reach.bool().all(dim=(1, 2))


def _pick(u: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Per row, the index of the ``floor(u · k)``-th True of ``allowed (G, M)`` (``k`` of them)."""
    k = allowed.sum(1)
    nth = torch.minimum((u * k).floor().long(), k - 1)  # (G,); a row without a True gives index 0
    rank = allowed.long().cumsum(1) - 1  # the rank of each True
    return (allowed & (rank == nth.unsqueeze(1))).float().argmax(1)


def sample_graphs(n: int, islands: int = 5, transports: int = 3, *, generator: torch.Generator,
                  exclude: torch.Tensor | None = None) -> torch.Tensor:
    """``n`` random strongly connected graphs as successor tables ``(n, transports, islands)``.

    Drawn in rounds over all graphs still missing (no loop over graphs): each round draws a
    candidate for every missing graph and keeps those that are strongly connected and, when
    ``exclude`` (``(M, transports, islands)``) is given, not among those graphs.
    """
    if islands < 2 or transports < 2:  # one transport: step 1 fills every slot, step 2 never finds one
        raise ValueError(f"need islands >= 2 and transports >= 2, got {islands} and {transports}")
    banned = graph_codes(exclude) if exclude is not None and len(exclude) else None
    out = torch.empty(0, transports, islands, dtype=torch.long)
    while len(out) < n:
        g = n - len(out)
        cand, ok = _candidates(g, islands, transports, generator)
        ok &= strongly_connected(cand)
        if banned is not None:
            ok &= ~torch.isin(graph_codes(cand), banned)
        out = torch.cat([out, cand[ok]])
    return out[:n]


def _candidates(g: int, N: int, A: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of the generator's steps 1 and 2 for ``g`` graphs (not yet checked for connectivity).

    Returns the graphs and whether step 2 found a free slot for every island (with few
    transports it can run out; such a graph is drawn again).
    """
    succ = torch.full((g, A, N), -1, dtype=torch.long)
    rows = torch.arange(g).unsqueeze(1)
    src = torch.arange(N).unsqueeze(0).expand(g, N)
    # 1. one way out of every island: another island, by a random transport
    u = torch.rand(g, N, 2, generator=generator)
    dest = (u[..., 0] * (N - 1)).floor().long().clamp(max=N - 2)
    dest = dest + (dest >= src).long()  # skip the island itself
    mode = (u[..., 1] * A).floor().long().clamp(max=A - 1)
    succ[rows, mode, src] = dest
    # 2. one way in to every island j: a free (transport, island ≠ j) slot, in island order
    u = torch.rand(g, N, generator=generator)
    found = torch.ones(g, dtype=torch.bool)
    for j in range(N):  # sequential: each choice fills a slot the next ones may not take
        free = (succ < 0)
        free[:, :, j] = False
        free = free.reshape(g, A * N)
        some = free.any(1)
        found &= some
        slot = _pick(u[:, j], free)
        succ.view(g, A * N)[torch.arange(g), slot] = torch.where(some, j, -1)
    return succ, found


def graph_codes(succ: torch.Tensor) -> torch.Tensor:
    """One int64 per graph (``succ (G, A, N)``, base ``N + 1`` digits), equal iff the graphs are."""
    G, A, N = succ.shape
    if A * N * torch.log2(torch.tensor(float(N + 1))) >= 63:
        raise ValueError(f"graphs of {A} transports and {N} islands do not fit one int64 code")
    digits = (succ + 1).reshape(G, A * N)
    weights = (N + 1) ** torch.arange(A * N, dtype=torch.long)
    return (digits * weights).sum(1)


def split_graphs(n_test: int, n_train: int, islands: int, transports: int, seed: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """The test graphs, then training graphs that are none of them, from one seeded generator.

    Returns ``(test, train, generator)``; the generator, advanced past both draws, is what
    ``train_graphs=resample`` draws the next training graphs from.
    """
    gen = torch.Generator().manual_seed(seed)
    test = sample_graphs(n_test, islands, transports, generator=gen)
    train = sample_graphs(n_train, islands, transports, generator=gen, exclude=test)
    return test, train, gen


class GraphState(NamedTuple):
    """The batch's environment state, each ``(B,)``."""

    goal: torch.Tensor  # long
    pos: torch.Tensor  # long
    last_action: torch.Tensor  # long, == transports for "none"
    timer: torch.Tensor  # long: unrewarded steps since the last time-out
    reward: torch.Tensor  # float: the previous step's reward


@dataclass
class GraphEnv:
    """A batch of graph environments, one graph per row (``succ (B, A, N)``), stepped as tensors.

    Example::

        env = GraphEnv(succ, reward=10.0, penalty=0.05, timeout=5, steps=30)
        s = env.reset(torch.rand(B, DRAWS))
        for k in range(30):
            x = env.observe(s, k)                      # (B, env.input_size)
            s, r = env.step(s, action, torch.rand(B, DRAWS))
    """

    succ: torch.Tensor
    reward: float = 10.0
    penalty: float = 0.05
    timeout: int = 5
    steps: int = 30
    reward_input: Literal["authors", "true"] = "authors"

    def __post_init__(self) -> None:
        if self.succ.dim() != 3:
            raise ValueError(f"succ must be (batch, transports, islands), got shape {tuple(self.succ.shape)}")
        if self.reward_input not in ("authors", "true"):
            raise ValueError(f"reward_input must be 'authors' or 'true', got {self.reward_input!r}")
        B, A, N = self.succ.shape
        dev = self.succ.device
        self.batch, self.transports, self.islands = B, A, N
        self._flat = self.succ.reshape(B, A * N)
        # others[i, k]: the k-th island other than i (a draw "elsewhere" is one lookup)
        every = torch.arange(N, device=dev).expand(N, N)
        self._others = every[every != torch.arange(N, device=dev).unsqueeze(1)].view(N, N - 1)
        # the observation's fixed part: the constant 1 (where the authors' "none" may also land)
        self._template = torch.zeros(self.input_size, device=dev)
        self._template[2 * N + A + 1] = 1.0

    @property
    def input_size(self) -> int:
        return 2 * self.islands + self.transports + 4

    def _elsewhere(self, k: torch.Tensor, not_this: torch.Tensor) -> torch.Tensor:
        """The ``k``-th island other than ``not_this`` (elementwise, ``k < N − 1``)."""
        return self._others.take(not_this * (self.islands - 1) + k)

    def _ranks(self, u: torch.Tensor) -> torch.Tensor:
        """Uniform draws ``u ∈ [0, 1)`` as ranks ``floor(u · (N − 1))`` among the other islands."""
        return (u * (self.islands - 1)).long().clamp_(max=self.islands - 2)

    def reset(self, u: torch.Tensor) -> GraphState:
        """A new episode from draws ``u (B, DRAWS)``: a uniform goal, a position elsewhere."""
        N = self.islands
        goal = (u[:, 0] * N).long().clamp_(max=N - 1)
        pos = self._elsewhere(self._ranks(u[:, 1]), goal)
        zero = torch.zeros_like(goal)
        return GraphState(goal, pos, torch.full_like(goal, self.transports), zero,
                          torch.zeros(len(goal), device=goal.device))

    def observe(self, s: GraphState, step: int) -> torch.Tensor:
        """The agent's input ``(B, input_size)`` at step ``step`` of the episode (module docstring)."""
        N, A = self.islands, self.transports
        if self.reward_input == "authors":
            act = s.last_action + (2 * N + 1)  # "none" (== A) lands on the constant's slot
        else:
            act = torch.where(s.last_action == A, 2 * N, s.last_action + (2 * N + 1))
        x = self._template.expand(len(s.goal), -1).clone()
        x.scatter_(1, torch.stack([s.goal, s.pos + N, act], 1), 1.0)
        x[:, 2 * N + A + 2] = step / self.steps
        if self.reward_input == "true":
            x[:, 2 * N + A + 3] = s.reward
        return x

    def step(self, s: GraphState, action: torch.Tensor, u: torch.Tensor) -> tuple[GraphState, torch.Tensor]:
        """Take ``action (B,)`` with re-draws from ``u (B, DRAWS)``; returns the new state and reward ``(B,)``."""
        nxt = self._flat.gather(1, (action * self.islands + s.pos).unsqueeze(1)).squeeze(1)  # (B,), −1: not offered
        invalid = nxt < 0
        reached = nxt == s.goal
        reward = (reached * self.reward).masked_fill_(invalid, -self.penalty)
        timer = s.timer + ~reached
        # reaching the goal and a time-out never coincide (a rewarded step does not count), so one
        # pair of draws serves both re-draws: the goal avoids the old goal, the position the new one
        out = timer > self.timeout
        redraw = reached | out
        k = self._ranks(u)
        new_goal = self._elsewhere(k[:, 0], s.goal)
        new_pos = self._elsewhere(k[:, 1], new_goal)
        goal = torch.where(redraw, new_goal, s.goal)
        pos = torch.where(redraw, new_pos, torch.where(invalid, s.pos, nxt))
        last = action.masked_fill(out, self.transports)
        return GraphState(goal, pos, last, timer.masked_fill(out, 0), reward), reward


def reference_step(succ: list, state: dict, action: int, u: list[float], *, reward: float, penalty: float,
                   timeout: int) -> float:
    """One environment's step, written out as the authors' loop does it (for the tests).

    ``succ[a][i]`` is the successor or -1; ``state`` (goal, pos, last_action, timer) is updated
    in place; ``u`` are the step's two uniform draws. Returns the reward.
    """
    N, A = len(succ[0]), len(succ)

    def other(x: float, excluded: int) -> int:
        choices = [i for i in range(N) if i != excluded]
        return choices[min(int(x * (N - 1)), N - 2)]

    old_goal = state["goal"]
    dest = succ[action][state["pos"]]
    state["last_action"] = action
    r = 0.0
    if dest == -1:
        r -= penalty
        state["timer"] += 1
    elif dest == old_goal:
        r += reward
        state["goal"] = other(u[0], old_goal)
        state["pos"] = other(u[1], state["goal"])
    else:
        state["timer"] += 1
        state["pos"] = dest
    if state["timer"] > timeout:
        state["goal"] = other(u[0], old_goal)
        state["pos"] = other(u[1], state["goal"])
        state["last_action"] = A
        state["timer"] = 0
    return r
