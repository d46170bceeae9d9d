import os, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent/"shared"
SAMPLE = ROOT/"papers"/"sprint"

# the tiny configuration: random 2-layer student, few questions, short generations
TINY = {"student": "tiny-random", "epochs": 1, "augment_size": 0.5, "per_cell": 2, "max_items": 6,
        "max_new_tokens": 8, "systems": "base,tuned", "latency_samples": 2, "workers": 1}

@pytest.fixture(scope="module")
def one_thread():
    "Tiny models run many tiny ops: one thread avoids OpenMP spin-waits that crawl on a busy CPU."
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

@pytest.fixture
def small_papers(tmp_path):
    "A papers root with a small sprint domain: two sample PDFs and the CSV records."
    d = tmp_path/"papers"/"sprint"
    d.mkdir(parents=True)
    for name in ("halvorsen_2018_stride_kinematics.pdf", "thorsdottir_2023_athlete_profiles.pdf",
                 "athlete_profiles.csv"):
        shutil.copy(SAMPLE/name, d/name)
    return tmp_path/"papers"

def purpose_cli(*args, cwd=None, env=None):
    "Run the installed `purpose` console script; returns the CompletedProcess."
    import subprocess
    exe = Path(sys.executable).parent/"purpose"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, **(env or {})}, timeout=600)
