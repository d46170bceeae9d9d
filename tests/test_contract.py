"""The stage registry is the run-folder contract and each stage's config its one list of settings:
README lists every registered file, no library module spells a registered file out (stages name
files by key: `run.chunks`), and each stage notebook's parameters cell is made from its config."""
import ast, json, re
from dataclasses import fields
from conftest import ROOT
from purpose.config import CONFIGS, field_docs, parameters_source, shared_fields
from purpose.core import FILES, REGISTRY, STAGES, CONTRACT, STAGE_READS

def test_readme_lists_every_registered_file():
    readme = (ROOT/"README.md").read_text()
    end = readme.index("## How the evaluation stays honest")
    block = readme[readme.index("runs/<domain>/"):end]
    missing = [p for _, p in FILES.values() if p not in block]
    assert not missing, f"README's run-folder block lacks {missing}"

def test_contract_and_reads_come_from_the_registry():
    assert list(CONTRACT) == list(STAGES) == [s.name for s in REGISTRY]
    assert all(p in [q for _, q in FILES.values()] for ps in STAGE_READS.values() for p in ps)

def _file_literals() -> set[str]:
    "Registered paths, and their file names that have an extension (`chunks.jsonl`, `graph.png`)."
    paths = {p for _, p in FILES.values()}
    return paths | {p.rsplit("/", 1)[1] for p in paths if "." in p.rsplit("/", 1)[1]}

def test_no_library_module_spells_a_registered_file():
    names, found = _file_literals(), {}
    for py in sorted((ROOT/"purpose").glob("*.py")):
        if py.stem in ("core", "_modidx"): continue          # core holds the registry itself
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.setdefault(py.name, []).append(f"{node.value} (line {node.lineno})")
    assert not found, f"registered files spelled out (use the registry's keys): {found}"

def _params_at(cells) -> list[int]:
    return [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]

def _cells(nb: str) -> list[dict]:
    return [c for c in json.loads((ROOT/"nbs"/nb).read_text())["cells"] if c["cell_type"] == "code"]

def _src(c) -> str: return "".join(c["source"])

def test_parameters_cells_are_generated_from_the_configs():
    for s in REGISTRY:
        cells = _cells(s.notebook)
        at = _params_at(cells)
        assert len(at) == 1, f"{s.notebook}: expected one cell tagged 'parameters'"
        assert _src(cells[at[0]]) == parameters_source(s.config), \
            f"{s.notebook}: the parameters cell differs from parameters_source({s.config.__name__})"
        run = "\n".join(_src(c) for c in cells[at[0] + 1:])
        assert f"from_cell({s.config.__name__}, globals())" in run, \
            f"{s.notebook}: the run cell builds no config"

def test_run_cells_name_files_by_key():
    names = _file_literals()
    for s in REGISTRY:
        cells = _cells(s.notebook)
        at = _params_at(cells)[0]
        run = "\n".join(_src(c) for c in cells[at + 1:])
        lits = {n.value for n in ast.walk(ast.parse(run)) if isinstance(n, ast.Constant)}
        assert not lits & names, f"{s.notebook}'s run cells spell out {sorted(lits & names)}"

def test_a_shared_parameter_means_one_thing():
    for name, stages in shared_fields().items():
        types = {str(next(f for f in fields(CONFIGS[s]) if f.name == name).type) for s in stages}
        assert len(types) == 1, f"{name} has types {types} in {stages}"
        # the meaning is the comment up to its first ';' or range; the rest may be a stage's default
        docs = {re.split(r";| \(", field_docs(CONFIGS[s])[name] or "")[0] for s in stages}
        assert len(docs) == 1, f"{name} is documented differently in {stages}: {docs}"

def test_readme_parameter_table_is_the_configs():
    from purpose.config import readme_table
    assert readme_table() in (ROOT/"README.md").read_text(), \
        "README's parameter table differs from the configs: paste purpose.config.readme_table()"

def test_stage_notebooks_show_their_run():
    "Each stage chapter keeps the outputs of its run on the sample domain (`make chapters`)."
    for s in REGISTRY:
        cells = _cells(s.notebook)
        run = cells[_params_at(cells)[0] + 1:]
        assert any(c.get("outputs") for c in run), f"{s.notebook} shows no run: `make chapters`"
        shown = sum(1 for c in cells if c.get("outputs"))
        assert shown >= 5, f"{s.notebook} keeps outputs in only {shown} cells: `make chapters`"
