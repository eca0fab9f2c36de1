"""The meta-RL graph environments: graphs with the promised properties, and the batched step equal
to a per-environment loop that replays the same draws."""

from __future__ import annotations

import pytest
import torch

from fastbind.data.graph_env import (DRAWS, GraphEnv, graph_codes, reference_step, sample_graphs, split_graphs,
                                     strongly_connected)


def _reachable(succ: list[list[int]], start: int) -> set[int]:
    seen, todo = {start}, [start]
    while todo:
        i = todo.pop()
        for row in succ:
            j = row[i]
            if j >= 0 and j not in seen:
                seen.add(j)
                todo.append(j)
    return seen


@pytest.mark.parametrize("islands,transports", [(5, 3), (4, 2), (7, 3), (3, 4)])
def test_graphs_have_the_generators_properties_over_many_seeds(islands, transports):
    for seed in range(20):
        g = sample_graphs(50, islands, transports, generator=torch.Generator().manual_seed(seed))
        assert g.shape == (50, transports, islands) and g.dtype == torch.long
        assert ((g >= -1) & (g < islands)).all()
        assert not (g == torch.arange(islands)).any()  # no transport leads back to the same island
        out_degree = (g >= 0).sum(1)  # (G, N)
        assert (out_degree >= 1).all()  # every island can be left
        for graph in g.tolist():
            assert {j for row in graph for j in row if j >= 0} == set(range(islands))  # every island reachable
            for i in range(islands):  # strongly connected, by a plain search from every island
                assert _reachable(graph, i) == set(range(islands))


def test_strongly_connected_against_a_search():
    gen = torch.Generator().manual_seed(3)
    succ = torch.randint(-1, 5, (400, 3, 5), generator=gen)
    succ = torch.where(succ == torch.arange(5), -1, succ)
    want = [all(_reachable(g, i) == set(range(5)) for i in range(5)) for g in succ.tolist()]
    assert strongly_connected(succ).tolist() == want
    assert 0 < sum(want) < 400  # both outcomes occur


def test_split_is_seeded_and_training_graphs_avoid_the_test_graphs():
    te, tr, _ = split_graphs(600, 600, 5, 3, 666)
    te2, tr2, _ = split_graphs(600, 600, 5, 3, 666)
    assert torch.equal(te, te2) and torch.equal(tr, tr2)
    assert not torch.isin(graph_codes(tr), graph_codes(te)).any()
    assert not torch.equal(split_graphs(600, 600, 5, 3, 667)[0], te)
    # exclude works even when most candidates are banned: a small world of graphs
    small_te, small_tr, _ = split_graphs(30, 30, 3, 2, 0)
    assert not torch.isin(graph_codes(small_tr), graph_codes(small_te)).any()


def test_graph_codes_are_equal_exactly_for_equal_graphs():
    g = sample_graphs(200, 5, 3, generator=torch.Generator().manual_seed(1))
    codes = graph_codes(g)
    same = (g.unsqueeze(0) == g.unsqueeze(1)).flatten(2).all(2)
    assert torch.equal(codes.unsqueeze(0) == codes.unsqueeze(1), same)


@pytest.mark.parametrize("reward_input", ["authors", "true"])
def test_batched_steps_equal_the_per_environment_loop(reward_input):
    B, N, A, T = 64, 5, 3, 200
    gen = torch.Generator().manual_seed(0)
    succ = sample_graphs(B, N, A, generator=gen)
    env = GraphEnv(succ, reward=10.0, penalty=0.05, timeout=5, steps=T, reward_input=reward_input)
    u0 = torch.rand(B, DRAWS, generator=gen)
    s = env.reset(u0)
    ref = [{"goal": int(s.goal[b]), "pos": int(s.pos[b]), "last_action": A, "timer": 0} for b in range(B)]
    for b in range(B):  # the reset: a goal, and a position elsewhere
        assert ref[b]["goal"] == min(int(u0[b, 0] * N), N - 1) and ref[b]["pos"] != ref[b]["goal"]
    graphs, prev = succ.tolist(), [0.0] * B
    seen = {"penalty": 0, "reward": 0, "timeout": 0}
    for k in range(T):
        x = env.observe(s, k)
        for b in range(B):  # the observation, written out
            want = torch.zeros(env.input_size)
            want[ref[b]["goal"]] = 1
            want[N + ref[b]["pos"]] = 1
            la = ref[b]["last_action"]
            if reward_input == "authors":
                want[2 * N + la + 1] = 1  # "none" (la == A) on the constant's slot
            else:
                want[2 * N if la == A else 2 * N + la + 1] = 1
                want[2 * N + A + 3] = prev[b]
            want[2 * N + A + 1] = 1
            want[2 * N + A + 2] = k / T
            assert torch.equal(x[b], want), (k, b)
        action = torch.randint(0, A, (B,), generator=gen)
        u = torch.rand(B, DRAWS, generator=gen)
        s, r = env.step(s, action, u)
        for b in range(B):
            before = dict(ref[b])
            rb = reference_step(graphs[b], ref[b], int(action[b]), u[b].tolist(), reward=10.0, penalty=0.05,
                                timeout=5)
            assert float(r[b]) == float(torch.tensor(rb, dtype=torch.float32)), (k, b)
            assert (int(s.goal[b]), int(s.pos[b]), int(s.last_action[b]), int(s.timer[b])) == (
                ref[b]["goal"], ref[b]["pos"], ref[b]["last_action"], ref[b]["timer"]), (k, b)
            prev[b] = float(torch.tensor(rb, dtype=torch.float32))
            seen["penalty"] += rb < 0
            seen["reward"] += rb > 0
            if ref[b]["last_action"] == A:
                seen["timeout"] += 1
                assert ref[b]["goal"] != before["goal"] and ref[b]["pos"] != ref[b]["goal"]
            if rb > 0:
                assert ref[b]["goal"] != before["goal"] and ref[b]["pos"] != ref[b]["goal"]
                assert ref[b]["timer"] == before["timer"]  # reaching the goal does not reset the count
    assert min(seen.values()) > 50  # every kind of event happened many times


def test_the_reference_step_follows_the_rules():
    # island 0 --a0--> 1 --a1--> 2 --a0--> 0; nothing else offered
    succ = [[1, -1, 0], [-1, 2, -1]]
    st = {"goal": 2, "pos": 0, "last_action": 2, "timer": 0}
    assert reference_step(succ, st, 1, [0.0, 0.0], reward=10, penalty=0.05, timeout=2) == -0.05
    assert st == {"goal": 2, "pos": 0, "last_action": 1, "timer": 1}
    assert reference_step(succ, st, 0, [0.0, 0.0], reward=10, penalty=0.05, timeout=2) == 0.0
    assert st == {"goal": 2, "pos": 1, "last_action": 0, "timer": 2}
    assert reference_step(succ, st, 1, [0.99, 0.0], reward=10, penalty=0.05, timeout=2) == 10.0
    assert st == {"goal": 1, "pos": 0, "last_action": 1, "timer": 2}  # goal ≠ 2, position ≠ new goal
    assert reference_step(succ, st, 1, [0.0, 0.99], reward=10, penalty=0.05, timeout=2) == -0.05
    assert st == {"goal": 0, "pos": 2, "last_action": 2, "timer": 0}  # time-out: re-drawn, action "none"


def test_bad_environments_are_refused():
    with pytest.raises(ValueError, match="batch, transports, islands"):
        GraphEnv(torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="reward_input"):
        GraphEnv(torch.zeros(1, 3, 5, dtype=torch.long), reward_input="yes")
    with pytest.raises(ValueError, match="islands >= 2"):
        sample_graphs(3, 1, 3, generator=torch.Generator())
    with pytest.raises(ValueError, match="transports >= 2"):  # would never finish
        sample_graphs(3, 4, 1, generator=torch.Generator())
