"""The store's write policies: the reservoir sample, payload rows, exact resumes."""

from __future__ import annotations

import pytest
import torch

from fastbind.memory import MbPA
from fastbind.memory.knn import RingStore


def _stream(n: int, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.arange(n)


def _reference_reservoir(n: int, size: int, seed: int) -> list[int]:
    """Algorithm R one entry at a time, drawing from the same generator: slot -> stream position."""
    g = torch.Generator().manual_seed(seed)
    slots: list[int] = []
    for p in range(n):
        if p < size:
            slots.append(p)
        else:
            j = int((torch.rand(1, generator=g, dtype=torch.float64) * (p + 1)).floor())
            if j < size:
                slots[j] = p
    return slots


@pytest.mark.parametrize("chunks", [[1] * 40, [7, 1, 13, 19], [40], [3, 30, 7]])
def test_reservoir_equals_one_by_one_algorithm_r(chunks):
    h, y = _stream(40)
    store = RingStore(10, policy="reservoir", seed=3)
    i = 0
    for c in chunks:
        store.append(h[i:i + c], y[i:i + c])
        i += c
    keys, values, positions = store.view()
    ref = _reference_reservoir(40, 10, 3)
    assert positions.tolist() == ref
    assert values.tolist() == ref  # labels are the stream positions here
    assert torch.equal(keys, h[torch.tensor(ref)])


def test_reservoir_keeps_a_uniform_sample():
    # Every position of a 200-entry stream survives in a 20-slot reservoir with probability 0.1.
    kept = torch.zeros(200, dtype=torch.float64)
    trials = 400
    for seed in range(trials):
        store = RingStore(20, policy="reservoir", seed=seed)
        h, y = _stream(200)
        for i in range(0, 200, 16):
            store.append(h[i:i + 16], y[i:i + 16])
        kept[store.view()[2]] += 1
    rate = kept / trials
    assert abs(float(rate.mean()) - 0.1) < 1e-12  # exactly 20 kept per trial
    # The first and the last quarter of the stream are kept equally often (a recency policy: 0 vs 0.4).
    assert abs(float(rate[:50].mean()) - float(rate[150:].mean())) < 0.02
    assert float(rate.min()) > 0.04 and float(rate.max()) < 0.17


def test_recent_policy_keeps_the_last_entries_and_reservoir_keeps_old_ones():
    h, y = _stream(100)
    recent, reservoir = RingStore(10), RingStore(10, policy="reservoir")
    recent.append(h, y)
    reservoir.append(h, y)
    assert sorted(recent.view()[2].tolist()) == list(range(90, 100))
    assert min(reservoir.view()[2].tolist()) < 90


def test_payload_rows_follow_their_entries():
    h, y = _stream(50)
    x = torch.arange(50 * 4, dtype=torch.uint8).reshape(50, 2, 2)
    for policy in ("recent", "reservoir"):
        store = RingStore(8, policy=policy, seed=1)
        for i in range(0, 50, 6):
            store.append(h[i:i + 6], y[i:i + 6], x[i:i + 6])
        _, values, _ = store.view()
        assert torch.equal(store.payload(), x[values])


def test_payload_must_be_consistent():
    h, y = _stream(4)
    store = RingStore(8)
    store.append(h[:2], y[:2], torch.zeros(2, 5))
    with pytest.raises(ValueError, match="payload"):
        store.append(h[2:], y[2:])
    with pytest.raises(ValueError, match="payload rows"):
        store.append(h[2:], y[2:], torch.zeros(2, 6))
    with pytest.raises(ValueError, match="rows"):
        store.append(h[2:], y[2:], torch.zeros(3, 5))


def test_resumed_reservoir_equals_uninterrupted():
    h, y = _stream(300)
    x = torch.randint(0, 255, (300, 4), dtype=torch.uint8)
    whole = RingStore(25, policy="reservoir", seed=9)
    whole.append(h[:120], y[:120], x[:120])
    whole.append(h[120:], y[120:], x[120:])
    first = RingStore(25, policy="reservoir", seed=9)
    first.append(h[:120], y[:120], x[:120])
    second = RingStore(25, policy="reservoir", seed=9)
    second.load_state_dict(first.state_dict())
    second.append(h[120:], y[120:], x[120:])
    for a, b in zip(whole.view(), second.view(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(whole.payload(), second.payload())


def test_bad_policy_and_mismatched_state():
    with pytest.raises(ValueError, match="policy must be one of recent, reservoir"):
        RingStore(4, policy="fifo")  # type: ignore[arg-type]
    a = RingStore(4, policy="reservoir")
    a.append(*_stream(6))
    with pytest.raises(ValueError, match="policy 'reservoir', this one 'recent'"):
        RingStore(4).load_state_dict(a.state_dict())


def test_mbpa_stream_scoring_needs_the_recent_policy():
    mbpa = MbPA(size=8, k=2, policy="reservoir")
    h, _ = _stream(4)
    with pytest.raises(ValueError, match="read it with logits"):
        mbpa.log_prob(h, torch.zeros(4, dtype=torch.int64), torch.zeros(3, 3))


def test_mbpa_logits_read_a_reservoir_memory_without_changing_it():
    h, y = _stream(60, d=4)
    mbpa = MbPA(size=16, k=4, lr=0.5, policy="reservoir", seed=2)
    mbpa.write(h, y % 3)
    before = mbpa.state_dict()
    W, b = torch.randn(3, 4), torch.randn(3)
    out = mbpa.logits(torch.randn(5, 4), W, b)
    assert out.shape == (5, 3)
    after = mbpa.state_dict()
    for key in ("keys", "values", "positions", "generator"):
        assert torch.equal(before[key], after[key])
    assert before["count"] == after["count"]
