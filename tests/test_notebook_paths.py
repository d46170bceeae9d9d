"""A stage notebook run by papermill from any folder finds the run its parameters name: relative
paths are read from the project root, as the notebooks' defaults (`runs/sprint`, `papers/sprint`)
are written."""
import shutil, uuid
import nbformat
import papermill as pm
import pytest
from conftest import ROOT
from purpose.core import STAGES, RunDir, project_root, read_jsonl
from purpose.pipeline import STAGE_NOTEBOOKS, notebooks_dir, stage_notebook

@pytest.fixture
def project_run():
    "A run folder under the project's runs/ (with extract and graph done), removed afterwards."
    from purpose.extract import extract_stage
    from purpose.graph import graph_stage
    rel = f"runs/_test-{uuid.uuid4().hex[:8]}"
    run = project_root()/rel
    extract_stage(run, papers_dir=str(ROOT/"papers"/"sprint"))
    graph_stage(run)
    yield rel, run
    shutil.rmtree(run, ignore_errors=True)

def test_papermill_from_another_folder_finds_the_run(project_run, tmp_path):
    rel, run = project_run
    out = tmp_path/"augment.ipynb"
    pm.execute_notebook(stage_notebook(notebooks_dir()/"05a_augment.ipynb"), str(out),
                        cwd=str(tmp_path), parameters={"run_dir": rel, "augment_size": 0.1},
                        progress_bar=False)
    assert read_jsonl(RunDir(run).texts)
    assert not (tmp_path/"runs").exists()       # nothing written beside the folder it started in

def test_every_stage_notebook_reads_its_folders_from_the_project_root():
    for stage, nb in STAGE_NOTEBOOKS:
        cells = nbformat.read(notebooks_dir()/nb, as_version=4).cells
        at = next(i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", []))
        params = cells[at].source
        run_cell = next(c for c in cells[at + 1:] if c.cell_type == "code").source
        assert 'run_dir: str = "runs/sprint"' in params, stage
        assert "run_dir = str(project_path(run_dir))" in run_cell, stage
        if "papers_dir:" in params:
            assert 'papers_dir: str = "papers/sprint"' in params, stage
            assert "project_path(papers_dir)" in run_cell, stage
    assert [s for s, _ in STAGE_NOTEBOOKS] == list(STAGES)
