"""The shared resumable training state: round trip, no state, wrong architecture."""

from __future__ import annotations

import pytest
import torch

from lesionforge.errors import CheckpointError
from lesionforge.train_state import load_train_state, save_train_state


def test_round_trip_restores_weights_optimizer_and_step(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_train_state(tmp_path, "model", model, {"opt": opt.state_dict()}, step=7)
    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    step, optim = load_train_state(tmp_path, "model", fresh)
    fresh_opt.load_state_dict(optim["opt"])
    assert step == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert torch.equal(fresh_opt.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_no_state_and_wrong_architecture(tmp_path):
    assert load_train_state(tmp_path, "model", torch.nn.Linear(3, 2)) == (0, None)
    save_train_state(tmp_path, "model", torch.nn.Linear(3, 2), {}, step=1)
    with pytest.raises(CheckpointError, match="train_state"):
        load_train_state(tmp_path, "model", torch.nn.Linear(5, 2))
