"""The trainer's structured events: a steady ETA from the first iteration, failures as one sentence and a kind."""
from __future__ import annotations

import errno
import json

from training.errors import ConfigError
from training.isaid import DataError
from training.train_log import EtaMeter, EventLog, describe_failure


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_eta_exists_from_the_first_iteration_and_stays_steady_through_a_slow_step():
    clock = Clock()
    meter = EtaMeter(clock=clock)
    meter.start(0)
    estimates = []
    for iteration in range(1, 41):
        clock.now += 8.0 if iteration == 20 else 1.0  # one step stalls (a checkpoint, another process)
        estimates.append(meter.update(iteration, 100))
    assert estimates[0] == 99.0  # the first iteration already gives an ETA
    before, during = estimates[18], estimates[19]
    assert during < 2 * before  # a single slow step moves the ETA by well under its own 8×
    assert abs(estimates[-1] - 60.0) < 0.25 * 60.0  # and the average comes back


def test_events_are_json_lines_with_the_first_and_last_progress(tmp_path):
    log = EventLog(tmp_path, every_s=3600.0)
    log.eta.start(0)
    for iteration in range(1, 6):
        log.progress(iteration, 5, 0.5, 0.01, last=iteration == 5)
    log.emit("failed", message="cannot decode t0.png", kind="input")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["iteration"] for e in events if e["event"] == "progress"] == [1, 5]
    assert events[-1]["event"] == "failed" and events[-1]["message"] == "cannot decode t0.png"


def test_failures_become_one_sentence_and_a_kind(tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "latest.pt"))
    assert describe_failure(full) == ("the disk is full while writing latest.pt: free some space on the worker and "
                                      "train again", "no_space")
    assert describe_failure(DataError("cannot decode t0.png: broken")) == ("cannot decode t0.png: broken", "input")
    assert describe_failure(ConfigError("x.yaml: train.lr must be > 0"))[1] == "input"
    message, kind = describe_failure(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB\nmore"))
    assert kind == "out_of_memory" and "\n" not in message and "batch_size" in message
    message, kind = describe_failure(KeyError("weights"))
    assert kind == "error" and message.startswith("training crashed: KeyError")
