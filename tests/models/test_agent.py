"""The meta-RL agents: one step at a time equals the whole sequence, and the FWM variants differ as documented."""

from __future__ import annotations

import pytest
import torch

from fastbind.errors import BadSetting
from fastbind.models.agent import AgentConfig, RecurrentAgent


@pytest.mark.parametrize("arch", ["lstm", "fwm"])
def test_stepping_equals_running_the_sequence_at_once(arch):
    torch.manual_seed(0)
    agent = RecurrentAgent(AgentConfig(arch=arch, hidden=8, fwm_size=4), inputs=6, actions=3).double()
    x = torch.randn(5, 9, 6, dtype=torch.double)
    state, logits, values = agent.init_state(5), [], []
    for k in range(9):
        out = agent.step(x[:, k], state)
        state = out.state
        logits.append(out.logits)
        values.append(out.value)
    z, _ = agent.lstm(x)  # the LSTM over the whole sequence, then the memory in its dense step form
    if arch == "fwm":
        agent.fwm.impl = "step"
        z = agent.fwm(z).out
    torch.testing.assert_close(torch.stack(logits, 1), agent.policy(z), rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.stack(values, 1), agent.value(z).squeeze(-1), rtol=0, atol=1e-12)


def test_fwm_variants():
    torch.manual_seed(0)
    authors = RecurrentAgent(AgentConfig(arch="fwm", hidden=32, fwm_size=16), 17, 3).fwm
    library = RecurrentAgent(AgentConfig(arch="fwm", hidden=32, fwm_size=16, fwm_variant="library"), 17, 3).fwm
    assert (authors.read_keys, authors.proj_bias, authors.residual) == ("linear", "torch", True)
    assert (library.read_keys, library.proj_bias, library.residual) == ("tanh", "zero", True)
    a = (6 / (32 + 16)) ** 0.5
    for m in (authors, library):
        assert m.W_write.weight.abs().max() <= a and m.W_read.weight.abs().max() <= a


def test_lstm_agent_has_no_memory_and_the_default_lstm_init():
    torch.manual_seed(0)
    agent = RecurrentAgent(AgentConfig(arch="lstm", hidden=16), 17, 3)
    assert agent.fwm is None and len(agent.init_state(4)) == 2
    b = agent.lstm.bias_ih_l0
    assert b.abs().max() <= 0.25 and b[16:32].abs().max() < 0.25  # no forget-gate offset


@pytest.mark.parametrize("key,value", [("arch", "gru"), ("hidden", 0), ("fwm_size", 0), ("hops", 0),
                                       ("fwm_variant", "paper")])
def test_bad_agent_settings(key, value):
    with pytest.raises(BadSetting, match=key):
        AgentConfig(**{key: value})
