"""Meta-RL throughput: the batched graph environment against a per-environment loop, and the agents' episodes.

Two measurements, each side by side in one run (median of ``--rounds``):

* **environment** — one episode (``--steps`` steps, ``--envs`` environments, uniformly random
  actions): observations and transitions. ``batched`` is :class:`fastbind.data.graph_env.GraphEnv`
  (tensor operations over the batch); ``loop`` is the structure of the authors' ``run_episode``:
  numpy arrays filled environment by environment, the re-draws by ``np.random.choice`` over a
  list of islands. Target: batched ≥ 20× the loop.
* **agents** — one training episode (forward, A2C loss, backward, Adam step) of the LSTM agent,
  the FWM agent as ``fastbind metarl`` runs it (writes kept as history), and the same FWM agent
  through the layer's dense step form (a ``(B, s, r, t)`` tensor written and read every step).

Usage::

    python benchmarks/bench_metarl.py --threads 1
    python benchmarks/bench_metarl.py --quick            # a few seconds, for smoke tests

Writes JSON (default ``benchmarks/out/bench_metarl.json``) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from _common import environment, write_result  # benchmarks/_common.py
from fastbind.data.graph_env import DRAWS, GraphEnv, split_graphs
from fastbind.metarl import play_episode
from fastbind.models.agent import AgentConfig, RecurrentAgent
from fastbind.training.a2c import a2c_loss

TARGET_ENV_SPEEDUP = 20.0


def batched_episode(env: GraphEnv, gen: torch.Generator) -> float:
    B, A = env.batch, env.transports
    s = env.reset(torch.rand(B, DRAWS, generator=gen))
    total = torch.zeros(B)
    for k in range(env.steps):
        env.observe(s, k)
        s, r = env.step(s, torch.randint(0, A, (B,), generator=gen), torch.rand(B, DRAWS, generator=gen))
        total += r
    return float(total.mean())


def loop_episode(graphs: list[np.ndarray], steps: int, rng: np.random.RandomState, *, reward: float = 10.0,
                 penalty: float = 0.05) -> float:
    """One episode the authors' way: per-environment Python loops over numpy adjacency tensors."""
    B, A, N = len(graphs), graphs[0].shape[0], graphs[0].shape[1]
    in_size = 2 * N + A + 4
    last = np.full(B, A, dtype="int32")
    timer = np.zeros(B, dtype="int32")
    total = np.zeros(B, dtype="float32")
    state = []
    for _ in range(B):
        goal = rng.randint(0, N)
        state.append([goal, rng.choice([i for i in range(N) if i != goal])])
    for k in range(steps):
        x = np.zeros((B, in_size), dtype="float32")
        r = np.zeros(B, dtype="float32")
        for b in range(B):
            x[b, state[b][0]] = 1
            x[b, N + state[b][1]] = 1
            x[b, 2 * N + last[b] + 1] = 1
            x[b, 2 * N + A + 1] = 1.0
            x[b, 2 * N + A + 2] = k / steps
            x[b, 2 * N + A + 3] = r[b]
        torch.from_numpy(x)
        actions = rng.randint(0, A, size=B)
        for b in range(B):
            goal, pos = state[b]
            dest = np.where(graphs[b][actions[b], pos] == 1)[0]
            last[b] = actions[b]
            if len(dest) == 0:
                r[b] -= penalty
                timer[b] += 1
            elif dest[0] == goal:
                r[b] += reward
                state[b][0] = rng.choice([i for i in range(N) if i != goal])
                state[b][1] = rng.choice([i for i in range(N) if i != state[b][0]])
            else:
                timer[b] += 1
                state[b][1] = dest[0]
            if timer[b] > N:
                state[b][0] = rng.choice([i for i in range(N) if i != goal])
                state[b][1] = rng.choice([i for i in range(N) if i != state[b][0]])
                last[b] = A
                timer[b] = 0
        total += r
    return float(total.mean())


def adjacency(succ: torch.Tensor) -> list[np.ndarray]:
    """Successor tables ``(G, A, N)`` as the authors' one-hot tensors ``A[a, from, to]``."""
    _, A, N = succ.shape
    out = []
    for g in succ.tolist():
        m = np.zeros((A, N, N))
        for a in range(A):
            for i in range(N):
                if g[a][i] >= 0:
                    m[a, i, g[a][i]] = 1
        out.append(m)
    return out


def agent_episode(arch: str, dense: bool, env: GraphEnv, hidden: int, size: int):
    torch.manual_seed(0)
    agent = RecurrentAgent(AgentConfig(arch=arch, hidden=hidden, fwm_size=size), env.input_size, env.transports)
    if dense:  # the layer's dense step form, one step per call
        fwm = agent.fwm
        fwm.impl = "step"

        def step(x, state):
            z, (h, c) = agent.lstm(x.unsqueeze(1), (state[0], state[1]))
            z, fw, _ = fwm(z, state[2])
            z = z.squeeze(1)
            return agent.policy(z), agent.value(z).squeeze(1), (h, c, fw)

        agent.step = step  # type: ignore[method-assign]
        agent.init_state = lambda B: (torch.zeros(1, B, hidden), torch.zeros(1, B, hidden),  # type: ignore
                                      fwm.init_state(B))
    opt = torch.optim.Adam(agent.parameters(), lr=1e-3, eps=1e-4)
    gen = torch.Generator().manual_seed(0)

    def run() -> float:
        logp, ent, v, r, _ = play_episode(agent, env, gen)
        loss = a2c_loss(logp, ent, v, r).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=600)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--size", type=int, default=16, help="s = r = t of the fast weights")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for smoke tests")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out" / "bench_metarl.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.envs, args.steps, args.hidden, args.size, args.rounds = 24, 6, 8, 4, 2
    if args.threads:
        torch.set_num_threads(args.threads)
    _, train, _ = split_graphs(args.envs, args.envs, 5, 3, 666)
    env = GraphEnv(train, steps=args.steps)
    graphs = adjacency(train)
    gen, rng = torch.Generator().manual_seed(0), np.random.RandomState(0)
    # the two environments give the same mean reward under random actions (a correctness column)
    mean_batched = statistics.mean(batched_episode(env, gen) for _ in range(max(4, args.rounds)))
    mean_loop = statistics.mean(loop_episode(graphs, args.steps, rng) for _ in range(max(4, args.rounds)))
    env_s: dict[str, list[float]] = {"batched": [], "loop": []}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        batched_episode(env, gen)
        env_s["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        loop_episode(graphs, args.steps, rng)
        env_s["loop"].append(time.perf_counter() - t0)
    env_med = {k: statistics.median(v) for k, v in env_s.items()}
    runners = {"lstm": agent_episode("lstm", False, env, args.hidden, args.size),
               "fwm": agent_episode("fwm", False, env, args.hidden, args.size),
               "fwm_dense_step": agent_episode("fwm", True, env, args.hidden, args.size)}
    for run in runners.values():
        run()  # warm-up
    agent_s: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            t0 = time.perf_counter()
            run()
            agent_s[name].append(time.perf_counter() - t0)
    agent_med = {k: statistics.median(v) for k, v in agent_s.items()}
    speedup = env_med["loop"] / env_med["batched"]
    result = {
        "benchmark": "metarl", **environment(torch.device("cpu")),
        "settings": {"envs": args.envs, "steps": args.steps, "hidden": args.hidden, "size": args.size,
                     "rounds": args.rounds},
        "environment": {"seconds_per_episode": env_med, "rounds": env_s, "speedup": speedup,
                        "target": TARGET_ENV_SPEEDUP, "target_met": speedup >= TARGET_ENV_SPEEDUP,
                        "random_policy_reward": {"batched": mean_batched, "loop": mean_loop}},
        "agents": {name: {"seconds_per_episode": agent_med[name], "episodes_per_s": 1 / agent_med[name],
                          "rounds": agent_s[name]} for name in runners},
        "fwm_history_vs_dense": agent_med["fwm_dense_step"] / agent_med["fwm"],
    }
    print(f"environment, one episode of {args.steps} steps × {args.envs}: batched {env_med['batched'] * 1e3:.1f} ms, "
          f"per-environment loop {env_med['loop'] * 1e3:.1f} ms: {speedup:.1f}× (target ≥ {TARGET_ENV_SPEEDUP:.0f}×)")
    print(f"random-policy reward: batched {mean_batched:.2f}, loop {mean_loop:.2f}")
    for name in runners:
        print(f"{name:15s} {agent_med[name]:.3f} s/episode ({1 / agent_med[name]:.2f} episodes/s)")
    write_result(args.out, result)


if __name__ == "__main__":
    main()
