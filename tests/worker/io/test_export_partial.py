"""The export's partial folder: created exclusively by the run that owns it, removed only by that run."""
from __future__ import annotations

import numpy as np
import pytest

from worker.io.outputs import OutputPathError, claim_partial_folder, partial_folder_path
from worker.io.training_export import ExportError, Tile, TrainingDataWriter, build_class_table

TABLE, _ = build_class_table(["tank"])


def _tile(writer: TrainingDataWriter, name: str = "a") -> None:
    writer.write(Tile("train", name, 0, 0, 32, 32), np.zeros((32, 32, 3), np.uint8), np.ones((32, 32), np.uint8))


def test_claim_is_exclusive_and_names_the_output(tmp_path):
    final = tmp_path / "export.v1"
    partial = claim_partial_folder(final, "export")
    assert partial == partial_folder_path(final) == tmp_path / ".export.v1.partial" and partial.is_dir()
    with pytest.raises(OutputPathError, match=r"^another export is writing .*export\.v1 "):
        claim_partial_folder(final, "export")
    assert partial.is_dir()


def test_a_users_partial_folder_is_never_touched(tmp_path):
    output = tmp_path / "NAME"
    users = partial_folder_path(output)
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="another export is writing"), TrainingDataWriter(output, TABLE) as writer:
        _tile(writer)
    assert (users / "notes.txt").read_text() == "mine" and sorted(users.iterdir()) == [users / "notes.txt"]
    assert not output.exists()


def test_a_second_concurrent_export_gets_one_sentence_and_the_first_completes(tmp_path):
    output = tmp_path / "out"
    with TrainingDataWriter(output, TABLE) as first:
        _tile(first)
        second = TrainingDataWriter(output, TABLE)
        with pytest.raises(ExportError) as refused, second:
            _tile(second, "b")
        message = str(refused.value)
        assert message.startswith(f"another export is writing {output}") and "\n" not in message
        assert (partial_folder_path(output) / "train" / "images" / "a.png").is_file()  # the first run's, intact
        first.commit({"tiles": []})
    assert (output / "train" / "images" / "a.png").is_file() and not partial_folder_path(output).exists()


def test_a_failed_export_removes_only_its_own_partial(tmp_path):
    output = tmp_path / "out"
    with pytest.raises(RuntimeError), TrainingDataWriter(output, TABLE) as writer:
        _tile(writer)
        raise RuntimeError("cancelled")
    assert not partial_folder_path(output).exists() and not output.exists()
