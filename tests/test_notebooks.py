"""Every notebook runs top to bottom on real data (nbclient) and writes its plots beside itself."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import REPO

NOTEBOOKS = {
    "autoencoder_core.ipynb": ["autoencoder_core_embedding.png", "autoencoder_core_denoising.png",
                               "autoencoder_core_anomalies.png"],
    "quickstart.ipynb": ["quickstart_training.png", "quickstart_metrics.png"],
    "embeddings.ipynb": ["embeddings_map.png"],
    "autorec_ratings.ipynb": ["autorec_ratings_rmse.png", "autorec_ratings_by_activity.png"],
    "benchmark.ipynb": ["benchmark_metrics.png", "benchmark_validation_curves.png", "benchmark_tuning_history.png"],
    "side_information.ipynb": ["side_information_by_popularity.png", "side_information_cold_start.png"],
}


def test_every_notebook_is_listed():
    assert {path.name for path in (REPO / "notebooks").glob("*.ipynb")} == set(NOTEBOOKS)


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_executes_and_saves_its_plots(name, tmp_path, data_dir, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("AEREC_DATA_DIR", str(data_dir))
    shutil.copy(REPO / "notebooks" / name, tmp_path / name)
    notebook = nbformat.read(tmp_path / name, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.get("output_type") == "error"]
    assert not errors
    for plot in NOTEBOOKS[name]:
        assert (tmp_path / plot).stat().st_size > 10_000, plot
