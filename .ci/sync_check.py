"""Fail when `nbdev_clean` or `nbdev_export` would change the tree.

Notebooks, library and cleaned notebooks must be in sync."""
import hashlib, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
bin_dir = Path(sys.executable).parent

def snapshot():
    files = sorted(root.glob("nbs/*.ipynb")) + sorted(root.glob("purpose/*.py"))
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

for step in ("nbdev_clean", "nbdev_export"):
    before = snapshot()
    subprocess.run([str(bin_dir/step)], cwd=root, check=True)
    after = snapshot()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if changed:
        print(f"{step} changed {', '.join(changed)}: run `{step}` and commit the result",
              file=sys.stderr)
        sys.exit(1)
print("sync check: notebooks clean, library in sync with notebooks")
