"""The stage registry is the run-folder contract: README lists every file it declares, and no stage module spells a
registered file's path out (stages name files by key: `run.chunks`)."""
import re
from conftest import ROOT
from purpose.core import FILES, REGISTRY, STAGES, CONTRACT, STAGE_READS

def test_readme_lists_every_registered_file():
    readme = (ROOT/"README.md").read_text()
    block = readme[readme.index("runs/<domain>/"):readme.index("## How the evaluation stays honest")]
    missing = [p for _, p in FILES.values() if p not in block]
    assert not missing, f"README's run-folder block lacks {missing}"

def test_contract_and_reads_come_from_the_registry():
    assert list(CONTRACT) == list(STAGES) == [s.name for s in REGISTRY]
    assert all(p in [q for _, q in FILES.values()] for ps in STAGE_READS.values() for p in ps)

MIGRATED = ("distill", "augment", "train", "evaluate", "pipeline")   # modules that name files by key only

def test_migrated_stage_modules_name_files_by_key():
    for m in MIGRATED:
        src = (ROOT/"purpose"/f"{m}.py").read_text()
        found = [p for _, p in FILES.values() if f'"{p}"' in src]
        found += re.findall(r'run\.(?:extract|graph|queries|distill|augment|train|eval)/"[\w.]+"', src)
        assert not found, f"purpose/{m}.py spells out {found}: use the registry's keys"
