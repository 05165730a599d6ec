"""Fine-tuning from the installed plugin alone: the zip carries training/ and its presets, and a worker Python made
only from worker-requirements.txt (what *Set up worker…* makes) fine-tunes with WORKER empty.

Nothing of the repository is on any path here: qgis_process runs QGIS's own Python with the plugin unpacked from
the built zip into a throw-away profile, and the local worker (and its training child) run in the
requirements-only venv with PYTHONPATH=<plugin folder>, as the plugin starts them.
"""
from __future__ import annotations

import json
import os
import subprocess

import pytest
from worker_support import make_export
from worker_venv_support import installed_plugin, requirements_only_python

pytestmark = [pytest.mark.qgis, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker_python() -> str:
    return requirements_only_python()


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    return installed_plugin(tmp_path_factory.mktemp("zip"))


def _in_worker_python(python: str, folder, code: str) -> str:
    """Run ``code`` in the worker's Python as the plugin runs it: the plugin folder as the only extra path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(folder)
    run = subprocess.run([python, "-c", code], env=env, cwd=folder.parent, capture_output=True, text=True,
                         timeout=180)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_presets_resolve_by_name_from_the_zip(plugin, worker_python):
    _, folder = plugin
    out = _in_worker_python(worker_python, folder, (
        "import json\nfrom training.presets import preset_names, preset_path\n"
        "from training.train_config import load_config\n"
        "rows = {n: [str(preset_path(n, d)), load_config(preset_path(n, d)).data.patch] "
        "for n in preset_names() for d in ('cpu', 'cuda')}\n"
        "print(json.dumps(rows))\n"))
    rows = json.loads(out)
    assert set(rows) == {"auto", "cpu", "gpu"}
    for path, _ in rows.values():
        assert path.startswith(str(folder / "training" / "configs")), path  # the zip's own recipes
    assert rows["cpu"][0].endswith("finetune_cpu.yaml") and rows["gpu"][0].endswith("finetune.yaml")


def test_local_fine_tuning_with_a_requirements_only_worker(plugin, worker_python, tiny_checkpoint, tmp_path):
    """factseg:train with WORKER empty and CONFIG left at auto: the CPU recipe, trained by the local worker."""
    from factseg_core import load_model

    env, _ = plugin
    data = make_export(tmp_path / "export")
    output = tmp_path / "tuned.pt"
    run = subprocess.run(
        ["/usr/bin/qgis_process.bin", "run", "factseg:train", "--", f"DATA={data}", f"MODEL={tiny_checkpoint}",
         f"WORKER_PYTHON={worker_python}", "ITERATIONS=2", f"OUTPUT_MODEL={output}"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=480)
    assert run.returncode == 0, run.stdout
    assert "(cpu) with the 'auto' recipe" in run.stdout and "Iteration 2/2" in run.stdout, run.stdout
    assert "MIOU:" in run.stdout and "ipc://" in run.stdout  # a local worker (ipc), evaluated on the val tile
    model = load_model(output)
    assert model.config.num_classes == 4 and model.config.backbone == "resnet18"
