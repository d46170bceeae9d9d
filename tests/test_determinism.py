"""Re-running the text stages gives byte-identical outputs, whatever Python's hash seed (sets and
dicts must never decide an order)."""
import hashlib, subprocess, sys
from pathlib import Path
from conftest import ROOT, SAMPLE

SCRIPT = """
import sys
from purpose.extract import extract_stage
from purpose.graph import graph_stage
from purpose.queries import queries_stage
from purpose.distill import distill_stage
papers, run = sys.argv[1], sys.argv[2]
extract_stage(run, papers_dir=papers, workers=1)
graph_stage(run)
queries_stage(run, per_cell=4)
distill_stage(run, domain="sprint", cache=False)
"""

def fingerprints(run: Path) -> dict:
    "Content hash of every stage output, but those with times or paths (manifest, logs, figures)."
    skip = {"manifest.json", "state.json", ".lock"}
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*"))
            if p.is_file() and p.name not in skip and p.suffix not in (".png", ".log", ".ipynb")}

def test_text_stages_do_not_depend_on_the_hash_seed(tmp_path):
    runs = []
    for seed in ("1", "2"):
        run = tmp_path/f"run{seed}"
        env = {"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        argv = [sys.executable, "-c", SCRIPT, str(SAMPLE), str(run)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(fingerprints(run))
    assert runs[0].keys() == runs[1].keys() and len(runs[0]) > 10
    differ = sorted(k for k in runs[0] if runs[0][k] != runs[1][k])
    assert not differ, f"outputs differ between hash seeds: {differ}"
