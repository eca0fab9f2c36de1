"""Meta-reinforcement learning on random-graph POMDPs (Schlag et al. 2021, section 4.2) as library functions.

An agent (:class:`~fastbind.models.agent.RecurrentAgent`, an LSTM or an FWM) plays episodes of
``env.steps`` steps in ``env.envs`` graph environments at once (:mod:`fastbind.data.graph_env`),
its state reset at each episode, and learns by advantage actor-critic with Monte-Carlo returns
(:mod:`fastbind.training.a2c`): one Adam step per episode. Every ``test_every`` training
episodes it plays one episode (stochastic policy, no learning) on the test graphs.

The graphs come from ``data_seed`` (the authors': 666): first ``env.envs`` test graphs, then as
many training graphs that are none of them. ``train_graphs=fixed`` (the authors' run) gives
environment ``j`` the same training graph in every episode, so an agent can memorise them;
``resample`` draws new training graphs (still none of the test graphs) for every episode.

A run folder holds ``config.json``, ``metrics.jsonl`` (``train/reward`` averaged over each
``log_every`` episodes, ``test/reward`` at every test), ``last.pt`` and, when finished,
``results.json``. Re-running on the same ``out`` resumes bit-identically from ``last.pt``
(weights, optimizer, every random generator), so ``max_minutes`` slices add up to one run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from fastbind.data.graph_env import DRAWS, GraphEnv, sample_graphs, split_graphs
from fastbind.errors import BadSetting
from fastbind.models.agent import AgentConfig, RecurrentAgent
from fastbind.runs import RunFolder, check_resume
from fastbind.training.a2c import a2c_loss
from fastbind.training.config import alias, to_dict
from fastbind.training.distributed import DistInfo, check_device, resolve_device
from fastbind.training.optim import OptimConfig, build_optimizer
from fastbind.training.seed import seed_everything

__all__ = ["A2CConfig", "EnvConfig", "MetaRLConfig", "play_episode", "train"]

RESULTS = "results"  # results.json in the run folder
LAST_TESTS = 10  # results.json's test reward: the mean of this many last tests


@dataclass
class EnvConfig:
    """The ``env`` section: the graph environments (defaults: the authors' run.sh)."""

    islands: int = 5
    transports: int = 3
    envs: int = 600  # environments per episode (training and test alike)
    steps: int = 30  # steps per episode
    reward: float = 10.0  # for reaching the goal
    penalty: float = 0.05  # for an action the island does not offer
    timeout: int = 0  # re-draw goal and position after more unrewarded steps than this (0: islands)
    reward_input: Literal["authors", "true"] = "authors"  # see fastbind.data.graph_env

    def __post_init__(self) -> None:
        if self.islands < 2:
            raise BadSetting("islands", f"must be >= 2, got {self.islands}")
        if self.transports < 2:
            raise BadSetting("transports", f"must be >= 2 (one transport cannot connect the islands), got "
                                           f"{self.transports}")
        for name in ("envs", "steps"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        if self.timeout < 0:
            raise BadSetting("timeout", f"must be >= 0 (0: the number of islands), got {self.timeout}")
        for name in ("reward", "penalty"):
            if not math.isfinite(getattr(self, name)):
                raise BadSetting(name, f"must be a finite number, got {getattr(self, name)}")
        if self.reward_input not in ("authors", "true"):
            raise BadSetting("reward_input", f"{self.reward_input!r} is not one of authors, true")


@dataclass
class A2CConfig:
    """The ``a2c`` section: the loss (:func:`fastbind.training.a2c.a2c_loss`)."""

    gamma: float = 0.9  # discount of the Monte-Carlo returns
    value_coef: float = 0.1
    entropy_coef: float = 0.03
    critic: Literal["authors", "per_env"] = "authors"  # authors: their (B, 1) − (B,) broadcast

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise BadSetting("gamma", f"must lie in [0, 1], got {self.gamma}")
        for name in ("value_coef", "entropy_coef"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, f"must be >= 0, got {getattr(self, name)}")
        if self.critic not in ("authors", "per_env"):
            raise BadSetting("critic", f"{self.critic!r} is not one of authors, per_env")


@dataclass
class MetaRLConfig:
    """Settings of ``fastbind metarl`` (every field is a ``key=value`` override).

    ``arch``, ``hidden`` and ``lr`` set the fields of those names in ``agent`` and ``optim``.
    The defaults are the authors' run: FWM agent (LSTM 32, fast weights 16³, 3 reads), 600
    environments of 5 islands and 3 transports, 30 steps, Adam 1e-3 (ε 1e-4), no clipping.
    """

    out: str = "runs/metarl"  # run folder
    seed: int = 0  # the agent's initialisation, its actions and the environments' draws
    data_seed: int = 666  # the graphs (the authors' data seed)
    train_graphs: Literal["fixed", "resample"] = "fixed"  # fixed: the same graph per environment every episode
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    max_steps: int = 30000  # training episodes
    max_minutes: float = 0.0  # also stop (with a checkpoint) after this much wall time; 0 = off
    test_every: int = 50  # a test episode after every this many training episodes (0 = never)
    log_every: int = 50  # training reward averaged over this many episodes
    checkpoint_every: int = 1000  # episodes between checkpoints (also at the end of a slice)
    tensorboard: bool | None = None  # None: when installed
    progress: bool = True
    env: EnvConfig = field(default_factory=EnvConfig)
    agent: AgentConfig = alias("arch", "hidden", default_factory=AgentConfig)
    a2c: A2CConfig = field(default_factory=A2CConfig)
    optim: OptimConfig = alias("lr", default_factory=lambda: OptimConfig(name="adam", lr=1e-3, eps=1e-4))

    def __post_init__(self) -> None:  # bad values fail while the command line is read
        for name in ("max_steps", "log_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise BadSetting(name, f"must be >= 1, got {getattr(self, name)}")
        for name in ("threads", "max_minutes", "test_every"):
            if not getattr(self, name) >= 0:
                raise BadSetting(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("seed", "data_seed"):
            if not 0 <= getattr(self, name) < 2**63:
                raise BadSetting(name, "must lie in [0, 2**63)")
        if self.train_graphs not in ("fixed", "resample"):
            raise BadSetting("train_graphs", f"{self.train_graphs!r} is not one of fixed, resample")
        check_device(self.device)


def _env(cfg: MetaRLConfig, succ: torch.Tensor) -> GraphEnv:
    e = cfg.env
    return GraphEnv(succ, reward=e.reward, penalty=e.penalty, timeout=e.timeout or e.islands, steps=e.steps,
                    reward_input=e.reward_input)


def play_episode(agent: RecurrentAgent, env: GraphEnv, gen: torch.Generator, *, learn: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One episode of ``env.steps`` steps in every environment of ``env``, from a fresh state.

    The environments' draws and the sampled actions come from ``gen`` (CPU), in a fixed order:
    the reset's draws, then per step the actions, then the step's draws.

    Returns ``(log_prob, entropy, values, rewards, actions)``, each ``(T, B)``; with
    ``learn=False`` nothing keeps a graph.
    """
    device = next(agent.parameters()).device
    B = env.batch
    logps, ents, vals, rews, acts = [], [], [], [], []
    with torch.set_grad_enabled(learn):
        state = agent.init_state(B)
        s = env.reset(torch.rand(B, DRAWS, generator=gen).to(device))
        for k in range(env.steps):
            logits, value, state = agent.step(env.observe(s, k), state)
            logp = F.log_softmax(logits, dim=-1)  # (B, A)
            probs = logp.detach().exp()
            action = torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(device)
            s, r = env.step(s, action, torch.rand(B, DRAWS, generator=gen).to(device))
            logps.append(logp.gather(1, action.unsqueeze(1)).squeeze(1))
            ents.append(-(logp.exp() * logp).sum(-1))
            vals.append(value)
            rews.append(r)
            acts.append(action)
    return tuple(torch.stack(t) for t in (logps, ents, vals, rews, acts))  # type: ignore[return-value]


def _generators(cfg: MetaRLConfig) -> dict[str, torch.Generator]:
    """The run's generators: training episodes, test episodes (separate, so testing never shifts training)."""
    return {"train": torch.Generator().manual_seed(cfg.seed),
            "test": torch.Generator().manual_seed(cfg.seed + 1_000_003)}


def train(cfg: MetaRLConfig) -> dict:
    """Run (or resume) training; returns the summary written to ``out/summary.json``."""
    device = resolve_device(cfg.device, DistInfo())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = RunFolder(cfg.out)
    ck = None
    if run.has_checkpoint("last"):
        ck, _ = run.load_checkpoint("last", map_location="cpu")
        check_resume(ck["config"], cfg, run.path)
    e = cfg.env
    test_graphs, train_graphs, graph_gen = split_graphs(e.envs, e.envs, e.islands, e.transports, cfg.data_seed)
    seed_everything(cfg.seed % 2**32)
    agent = RecurrentAgent(cfg.agent, inputs=2 * e.islands + e.transports + 4, actions=e.transports).to(device)
    opt = build_optimizer(agent.parameters(), cfg.optim)
    gens = _generators(cfg)
    episode, tests = 0, []
    if ck is not None:
        agent.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        for name, g in gens.items():
            g.set_state(ck["generators"][name])
        graph_gen.set_state(ck["generators"]["graphs"])
        if ck.get("train_graphs") is not None:
            train_graphs = ck["train_graphs"]
        episode, tests = int(ck["step"]), [tuple(t) for t in ck["tests"]]
    run.save_config(cfg, recipe="metarl")
    log = run.metrics_writer(cfg.tensorboard)
    test_env = _env(cfg, test_graphs.to(device))
    train_env = _env(cfg, train_graphs.to(device))

    def checkpoint() -> None:
        run.save_checkpoint("last", {
            "model": agent.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg), "step": episode,
            "generators": {"graphs": graph_gen.get_state(), **{k: g.get_state() for k, g in gens.items()}},
            "train_graphs": train_graphs if cfg.train_graphs == "resample" else None, "tests": tests,
        })

    t0 = time.perf_counter()
    bar = tqdm(total=cfg.max_steps, initial=episode, desc=f"metarl {cfg.agent.arch}-{cfg.agent.hidden}",
               dynamic_ncols=True, disable=not cfg.progress)
    rew_sum, loss_sum, n, t_log = 0.0, 0.0, 0, time.perf_counter()
    stopped = False
    agent.train()
    while episode < cfg.max_steps:
        if cfg.train_graphs == "resample":
            train_graphs = sample_graphs(e.envs, e.islands, e.transports, generator=graph_gen, exclude=test_graphs)
            train_env = _env(cfg, train_graphs.to(device))
        logp, ent, values, rewards, _ = play_episode(agent, train_env, gens["train"])
        parts = a2c_loss(logp, ent, values, rewards, gamma=cfg.a2c.gamma, value_coef=cfg.a2c.value_coef,
                         entropy_coef=cfg.a2c.entropy_coef, critic=cfg.a2c.critic)
        opt.zero_grad(set_to_none=True)
        parts.loss.backward()
        opt.step()
        episode, n = episode + 1, n + 1
        rew_sum += float(rewards.sum(0).mean())
        loss_sum += float(parts.loss.detach())
        rec: dict[str, float] = {}
        if episode % cfg.log_every == 0 or episode == cfg.max_steps:
            now = time.perf_counter()
            rec.update({"train/reward": rew_sum / n, "train/loss": loss_sum / n,
                        "episodes_per_s": n / max(now - t_log, 1e-9)})
            rew_sum, loss_sum, n, t_log = 0.0, 0.0, 0, now
        if cfg.test_every and episode % cfg.test_every == 0:
            agent.eval()
            *_, test_rewards, _ = play_episode(agent, test_env, gens["test"], learn=False)
            agent.train()
            tests.append((episode, float(test_rewards.sum(0).mean())))
            rec["test/reward"] = tests[-1][1]
        if rec:
            log.log(episode, rec)
            names = {"train/reward": "train", "test/reward": "test", "episodes_per_s": "ep/s"}
            bar.set_postfix({names[k]: f"{v:.1f}" for k, v in rec.items() if k in names})
        bar.update(1)
        if episode % cfg.checkpoint_every == 0 or episode == cfg.max_steps:
            checkpoint()
        # a slice ends where a training-reward window ends, so sliced metrics equal uninterrupted ones
        out_of_time = cfg.max_minutes and time.perf_counter() - t0 > 60 * cfg.max_minutes
        if episode < cfg.max_steps and out_of_time and episode % cfg.log_every == 0:
            checkpoint()
            stopped = True
            break
    bar.close()
    finished = episode >= cfg.max_steps
    last = [r for _, r in tests[-LAST_TESTS:]]
    summary = {"step": episode, "max_steps": cfg.max_steps, "finished": finished, "arch": cfg.agent.arch,
               "hidden": cfg.agent.hidden, "tests": len(tests),
               "test_reward": sum(last) / len(last) if last else None,
               "seconds_this_run": time.perf_counter() - t0, "stopped_early": stopped}
    if finished:
        run.write_result(RESULTS, {"arch": cfg.agent.arch, "hidden": cfg.agent.hidden, "episodes": episode,
                                   "test_reward": summary["test_reward"], "last_tests": LAST_TESTS,
                                   "test_rewards": tests})
    run.write_summary(summary)
    log.close()
    return summary
