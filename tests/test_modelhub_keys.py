"No key appears in any log, manifest, cache or output notebook (papermill against the wire server)."
import json, sys
from pathlib import Path

import nbformat
import pytest

from purpose.modelhub import KEY_VARS
from purpose.wire import WireServer

OPENAI_KEY = "sk-test-LEAKCHECK-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-LEAKCHECK-fedcba9876543210"

NB_CODE = '''\
from purpose.core import stage_run
from purpose.modelhub import complete_many, get_teacher, grounded_messages
chunks = [{"doc_id": "d1", "text": "Ground contact time at maximum velocity was 0.09 s."}]
prompts = [grounded_messages(f"How long is ground contact ({i})?", chunks) for i in range(4)]
with stage_run(run_dir, "distill", {"teacher": teacher, "judge": judge}) as rec:
    res = complete_many([teacher, "offline"], prompts, cache=True)
    judged = complete_many(judge, prompts[:2], cache=True)
    rec.counts.update(ok=sum(r.ok for r in res), judged=sum(r.ok for r in judged))
    rec.info["usage"] = res.summary()
print(res[0].text, judged[0].text)
print(get_teacher(teacher), res.ledger)
'''


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    for k in {v for vs in KEY_VARS.values() for v in vs}: monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", ANTHROPIC_KEY)
    monkeypatch.setenv("PURPOSE_CACHE", str(tmp_path/"cache"))
    monkeypatch.setenv("PURPOSE_CONFIG", str(tmp_path/"config.json"))


def test_no_key_in_output_notebook_manifest_cache_or_log(tmp_path):
    import papermill as pm
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell('teacher = "offline"\njudge = "offline"\nrun_dir = "run"')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(NB_CODE)]
    src, out = tmp_path/"stage.ipynb", tmp_path/"out"/"stage.out.ipynb"
    out.parent.mkdir()
    nbformat.write(nb, src)
    with WireServer() as ws:
        params = {"teacher": ws.spec("wire-model", provider="openai"),
                  "judge": f"anthropic:claude-wire@{ws.url}", "run_dir": str(tmp_path/"run")}
        pm.execute_notebook(str(src), str(out), kernel_name="python3", cwd=str(tmp_path),
                            progress_bar=False, log_output=False, parameters=params)
        log = [vars(q) for q in ws.log]
    assert len(log) == 6 and all(q["had_key"] for q in log)            # the keys were sent ...
    manifest = json.loads((tmp_path/"run"/"manifest.json").read_text())
    assert manifest["stages"]["distill"]["counts"] == {"ok": 4, "judged": 2}
    assert "Wire reply from wire-model" in out.read_text()
    texts = {"output notebook": out.read_text(), "manifest": json.dumps(manifest),
             "server log": json.dumps(log, default=str)}
    texts.update({str(p): p.read_text() for p in (tmp_path/"cache").rglob("*.json")})
    assert len(texts) > 3 + 5
    for where, text in texts.items():                                  # ... and appear nowhere
        for key in (OPENAI_KEY, ANTHROPIC_KEY, "LEAKCHECK"):
            assert key not in text, f"key leaked into {where}"
