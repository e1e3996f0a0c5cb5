"""Generator training in several processes through accelerate (as `accelerate launch --num_processes 2`),
on CPU with gloo: both ranks end with identical weights, and only the main process writes the model."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch.multiprocessing as mp

TESTS = str(Path(__file__).resolve().parent)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, out: str, budget: float | None = None) -> None:
    # what `accelerate launch` sets for each process
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    sys.path.insert(0, TESTS)
    import torch
    from test_generate_common import pairs, tiny_cfg

    from lesionforge.data.demo import make_demo_arrays
    from lesionforge.devices import end_processes
    from lesionforge.generate.trainer import train_generator

    torch.set_num_threads(1)
    # budget: rank 1's clock runs 1000 s per reading, so only it is past the budget after its first step; the
    # ranks must still stop at the same step
    import itertools
    import time

    if budget is not None and rank == 1:
        real, ticks = time.perf_counter, itertools.count()
        time.perf_counter = lambda: real() + 1000.0 * next(ticks)
    train_generator(tiny_cfg("mask2image", steps=4, checkpoint_every=2, max_train_seconds=budget),
                    pairs(make_demo_arrays(n=40, size=32)), out, progress=False)
    end_processes()  # as the CLI does: a rank that exits with its gloo group alive can abort in its teardown


@pytest.mark.slow
def test_two_processes_train_one_generator_with_identical_weights_on_both_ranks(tmp_path):
    out = tmp_path / "gen"
    mp.spawn(_rank, args=(2, _free_port(), str(out)), nprocs=2)
    meta = json.loads((out / "lesionforge.json").read_text(encoding="utf-8"))
    digests = meta["rank_digests"]  # per rank: sums of every trained and EMA weight, gathered at the end
    assert len(digests) == 2 and digests[0] == digests[1] and len(digests[0]) > 10
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]


@pytest.mark.slow
def test_a_time_budget_one_rank_has_spent_stops_every_rank_at_the_same_step(tmp_path):
    out = tmp_path / "gen"
    mp.spawn(_rank, args=(2, _free_port(), str(out), 500.0), nprocs=2)
    meta = json.loads((out / "lesionforge.json").read_text(encoding="utf-8"))
    assert meta["steps"] == 1 and meta["rank_digests"][0] == meta["rank_digests"][1]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]
