import json

import numpy as np
import torch

from tunedet.engine.metrics_log import JSONLLogger, MetricsLoggers, TensorBoardLogger


def test_jsonl_logger_writes_one_parseable_object_per_line(tmp_path):
    path = tmp_path / "logs" / "metrics.jsonl"
    logger = JSONLLogger(path)
    logger.log(10, {"loss": torch.tensor(0.5), "lr": 0.01, "n": np.int64(3), "phase": "train"})
    logger.log(20, {"loss": float("nan"), "bbox_mAP": np.float32(0.25)})
    # flushed on every write: readable before close
    lines = path.read_text().splitlines()
    logger.close()
    records = [json.loads(line) for line in lines]
    assert records[0] == {"step": 10, "loss": 0.5, "lr": 0.01, "n": 3, "phase": "train"}
    assert records[1] == {"step": 20, "loss": "nan", "bbox_mAP": 0.25}


def test_jsonl_logger_appends_across_reopen(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        logger = JSONLLogger(path)
        logger.log(step, {"x": step})
        logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


class Recorder:
    def __init__(self):
        self.calls, self.closed = [], False

    def log(self, step, metrics):
        self.calls.append((step, metrics))

    def close(self):
        self.closed = True


def test_metrics_loggers_fan_out_to_every_logger():
    a, b = Recorder(), Recorder()
    with MetricsLoggers([a, b]) as loggers:
        loggers.log(5, {"loss": 1.0})
    assert a.calls == b.calls == [(5, {"loss": 1.0})]
    assert a.closed and b.closed


def test_tensorboard_logger_writes_scalar_event_file(tmp_path):
    logger = TensorBoardLogger(tmp_path / "tb")
    logger.log(3, {"loss": torch.tensor(2.0), "lr": 0.1, "note": "skipped"})
    logger.close()
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["loss", "lr"]
    (loss,) = events.Scalars("loss")
    assert (loss.step, loss.value) == (3, 2.0)


def test_jsonl_logger_drops_a_torn_last_line_with_a_note(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # killed mid-write
    notes = []
    logger = JSONLLogger(path, note=notes.append)
    logger.log(2, {"loss": 0.25})
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    assert notes == [f"{path}: dropped a torn last line (15 bytes)"]
    assert logger.rows == 2


def test_jsonl_logger_keeps_only_the_rows_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
    notes = []
    logger = JSONLLogger(path, keep_rows=2, note=notes.append)
    logger.log(3, {"x": 1})
    logger.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert notes == [f"{path}: dropped 2 row(s) written after the checkpoint resumed from"]


def test_tensorboard_logger_of_a_resumed_run_hides_the_steps_after_its_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = TensorBoardLogger(tmp_path / "tb")
    for step in (1, 2, 3):
        first.log(step, {"loss": float(step)})
    first.close()
    resumed = TensorBoardLogger(tmp_path / "tb", purge_step=3)  # resumed from step 2
    resumed.log(3, {"loss": 30.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 1.0), (2, 2.0), (3, 30.0)]
