"""factseg:train through real Processing against a real worker: a model file, progress, and a clean cancel."""
from __future__ import annotations

import pytest
from qgis.core import QgsProcessingException, QgsProcessingFeedback
from worker_support import TINY_CONFIG, free_tcp_endpoint, make_export, start_worker

pytestmark = pytest.mark.qgis


@pytest.fixture(scope="module")
def worker(tiny_checkpoint):
    with start_worker(tiny_checkpoint, free_tcp_endpoint()) as running:
        yield running


class Recording(QgsProcessingFeedback):
    def __init__(self, cancel_at_running: bool = False) -> None:
        super().__init__()
        self.infos: list[str] = []
        self.progress: list[float] = []
        self.cancel_at_running = cancel_at_running
        self.progressChanged.connect(self.progress.append)

    def pushInfo(self, info):  # noqa: N802
        self.infos.append(info)
        if self.cancel_at_running and info.startswith("Iteration"):
            self.cancel()
        super().pushInfo(info)


def _params(tmp_path, worker, **extra):
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY_CONFIG)
    return {"DATA": str(make_export(tmp_path / "export")), "ITERATIONS": 3, "CONFIG": str(config),
            "WORKER": worker.endpoint, "OUTPUT_MODEL": str(tmp_path / "tuned.pt"), **extra}


def test_train_writes_a_model_and_reports_progress(provider, worker, tmp_path):
    import processing

    from factseg_core import load_model

    feedback = Recording()
    result = processing.run("factseg:train", _params(tmp_path, worker), feedback=feedback)
    assert result["OUTPUT_MODEL"] == str(tmp_path / "tuned.pt")
    assert load_model(result["OUTPUT_MODEL"]).config.num_classes == 4
    assert any(line.startswith("Iteration 3/3") for line in feedback.infos), feedback.infos
    assert any("Validation mIoU" in line or "No validation result" in line for line in feedback.infos)
    assert feedback.progress and max(feedback.progress) == pytest.approx(100.0)


def test_cancel_mid_training_leaves_no_model(provider, worker, tmp_path):
    import processing

    from worker.client import WorkerClient

    feedback = Recording(cancel_at_running=True)
    with pytest.raises(QgsProcessingException):
        processing.run("factseg:train", _params(tmp_path, worker, ITERATIONS=10_000), feedback=feedback)
    assert not (tmp_path / "tuned.pt").exists() and not list(tmp_path.glob(".*partial*"))
    with WorkerClient(worker.endpoint) as client:
        training = client.info()["training"]
    assert training is None or training["state"] == "cancelled"


def test_output_that_is_an_input_is_refused(provider, worker, tmp_path, tiny_checkpoint):
    import processing

    params = _params(tmp_path, worker, INIT_FROM=str(tiny_checkpoint), OUTPUT_MODEL=str(tiny_checkpoint))
    before = tiny_checkpoint.read_bytes()
    with pytest.raises(QgsProcessingException):
        processing.run("factseg:train", params, feedback=Recording())
    assert tiny_checkpoint.read_bytes() == before


def test_train_on_a_curve_worker_with_keys(provider, tiny_checkpoint, tmp_path):
    """The GPU box down the corridor: factseg:train reaches a CURVE worker with SERVER_KEY and CLIENT_KEY, and
    without the keys it is one clear refusal, not a model."""
    import processing
    from plugin_support import start_curve_worker

    from factseg_core import load_model

    running, keys = start_curve_worker(tiny_checkpoint, tmp_path / "keys")
    try:
        params = _params(tmp_path, running, ITERATIONS=2, SERVER_KEY=str(keys["server_public"]),
                         CLIENT_KEY=str(keys["client_secret"]))
        result = processing.run("factseg:train", params, feedback=Recording())
        assert load_model(result["OUTPUT_MODEL"]).config.num_classes == 4
        half = {**params, "OUTPUT_MODEL": str(tmp_path / "half.pt")}
        del half["CLIENT_KEY"]
        with pytest.raises(QgsProcessingException):
            processing.run("factseg:train", half, feedback=Recording())
        assert not (tmp_path / "half.pt").exists()
    finally:
        running.stop()
