"""Data-parallel training under torchrun (gloo, 2 CPU processes) equals 1-process training
on the same global batch, and the sharded evaluation equals the 1-process evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tunedet.config.loader import load_config
from tunedet.data.samplers import EpochBatchSampler
from tunedet.engine import distributed
from tunedet.engine.checkpoint import load_checkpoint
from tunedet.engine.evaluator import evaluation_batches, merge_shards
from tunedet.engine.trainer import Trainer
from tunedet.losses.rank_mean import mean_count_over_ranks, reduce_mean

# A GroupNorm-only net (BatchNorm statistics would differ between a per-rank batch of 2
# and a batch of 4), SGD with the linear scaling rule on, 4 iterations over 2 epochs.
COMMON = (
    "model.backbone.norm=gn",
    "data.train.num_images=8",
    "data.val.num_images=5",
    "data.val_batch_size=2",
    "optim={type: sgd, lr: 0.02, momentum: 0.9, auto_scale_lr: true, base_batch: 4}",
    "train.max_iters=4",
    "schedule.warmup.iters=0",
    "schedule.policy.type=constant",
    "train.amp=none",  # equal to fp32 rounding; bf16 rounds a batch of 2 and of 4 differently
    "train.ckpt_every=0",
    "train.log_every=1",
    "model.score_thr=0.0",
    "threads=1",
)


def quiet(*_args, **_kwargs) -> None:
    pass


def run_torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", "2", "-m", "tunedet.cli.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_processes_train_and_evaluate_like_one_process_on_the_global_batch(
    tmp_path: Path, tiny_demo: list[str]
):
    overrides = [*tiny_demo, *COMMON]
    two = tmp_path / "two"
    done = run_torchrun(["train", "retinanet/demo", *overrides, "data.batch_size=2",
                         "--work-dir", str(two)], tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1  # rank 0 alone prints
    assert "(2 process(es))" in done.stdout
    # rank 0 alone writes: one set of log rows, one checkpoint
    rows = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert [p.name for p in (two / "checkpoints").glob("*.pt")] == ["iter_0000004.pt"]

    # One process, batch of 4 = 2 ranks × 2.
    one = Trainer(
        load_config("retinanet/demo", [*overrides, "data.batch_size=4"]),
        tmp_path / "one",
        log=quiet,
    )
    assert one.optimizer.param_groups[0]["lr"] == pytest.approx(0.02)  # 0.02 · 4 / 4
    initial = {k: v.clone() for k, v in one.model.state_dict().items()}
    one.train()
    state = load_checkpoint(two / "checkpoints" / "iter_0000004.pt")
    assert state["iteration"] == 4
    moved = 0.0
    for name, reference in one.model.state_dict().items():
        torch.testing.assert_close(state["model"][name], reference, rtol=1e-4, atol=1e-5, msg=name)
        moved = max(moved, float((reference.float() - initial[name].float()).abs().max()))
    assert moved > 1e-2  # the weights did train
    # The logged loss of the 2-process run is the mean over ranks = the global batch's loss.
    rows_one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    first_two, first_one = (
        next(r for r in rows if "loss" in r),
        next(r for r in rows_one if "loss" in r),
    )
    assert first_two["loss"] == pytest.approx(first_one["loss"], rel=1e-5)

    # Evaluation: the 2-process run's metrics (each rank predicted a shard of the 3 val
    # batches) equal one process evaluating the same weights.
    one.model.load_state_dict(state["model"])
    metrics_one = one.evaluate()
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_two == metrics_one
    assert max(metrics_one.values()) > 0


def test_evaluation_batches_give_every_batch_to_one_rank_in_order():
    shards = [evaluation_batches(7, 2, r, 3) for r in range(3)]
    assert shards == [[[0, 1], [6]], [[2, 3]], [[4, 5]]]
    one = evaluation_batches(7, 2, 0, 1)
    assert sorted(sum(shards, []), key=lambda b: b[0]) == one


def test_merge_shards_restores_the_one_process_order():
    # 5 batches over 2 ranks: rank 0 has global batches 0, 2, 4, rank 1 has 1, 3.
    def results(batch: int, n: int) -> list[dict]:
        return [{"image_id": batch, "k": k} for k in range(n)]

    rank0 = [{**r, "_batch": i} for i, b in enumerate([0, 2, 4]) for r in results(b, 2)]
    rank1 = [{**r, "_batch": i} for i, b in enumerate([1, 3]) for r in results(b, 1)]
    merged = merge_shards([rank0, rank1])
    expected = [r for b in range(5) for r in results(b, 2 if b % 2 == 0 else 1)]
    assert merged == expected


def test_sampler_slices_of_the_ranks_make_up_the_global_batches_every_epoch():
    whole = EpochBatchSampler(10, 4, seed=3)
    ranks = [EpochBatchSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    iterators = [iter(whole), *(iter(s) for s in ranks)]
    for _ in range(6):  # three epochs of two batches
        batch, a, b = (next(it) for it in iterators)
        assert a + b == batch
        assert not set(a) & set(b)
    assert whole.epoch_order(0).tolist() != whole.epoch_order(1).tolist()  # reshuffled


def test_sampler_refuses_a_batch_that_does_not_split_over_the_ranks():
    with pytest.raises(ValueError, match="not a multiple of world_size"):
        EpochBatchSampler(10, 5, seed=0, rank=0, world_size=2)


def test_helpers_are_identities_in_one_process():
    count = torch.tensor(0.0)
    assert not distributed.is_distributed()
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert mean_count_over_ranks(count).item() == 1.0  # clamped like max(n, 1)
    assert mean_count_over_ranks(torch.tensor(7.0)).item() == 7.0
    value = torch.tensor([1.0, 2.0])
    assert reduce_mean(value) is value
    assert distributed.gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.any_over_ranks([True, False], torch.device("cpu")) == [True, False]


def test_sync_bn_on_cpu_is_refused_with_one_line():
    with pytest.raises(ValueError, match="sync_bn=true needs CUDA"):
        distributed.convert_sync_batchnorm(torch.nn.BatchNorm2d(4), torch.device("cpu"))


def test_sync_bn_conversion_keeps_the_checkpoint_keys():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    keys = list(model.state_dict())
    converted = distributed.convert_sync_batchnorm(model, torch.device("cuda"))  # no GPU used
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert list(converted.state_dict()) == keys  # checkpoints load either way
