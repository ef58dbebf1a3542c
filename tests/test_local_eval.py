"""A real judged run on the embedded local model: ``moac eval`` answers an MT-Bench question
(both turns) with a tiny local pipeline and has the same model score each turn with
MT-Bench's judge prompts. SmolLM2-135M is no judge: the test asserts the path (calls,
verdicts recorded parsed or not, never guessed; report written), not the scores.

Skips without the local runtime and model, unless ``MOAC_REQUIRE_LOCAL=1`` (CI).
"""

from __future__ import annotations

import json


import moac.cli.main as cli
from local_support import requires_local
from moac.traces.trace import read_trace

pytestmark = requires_local

SOURCE = """
provider local {
  kind = local
  parallel = 2
}

model smollm2 = local "SmolLM2-135M-Instruct" {
  price = $0/M
  params = 135M
  context = 4k
  speed = 10ms ttft, 98 tok/s, 250 tok/s prefill
}

pipeline tiny {
  layer propose = smollm2 x 2 (temperature = [0.3, 0.9], seed = [1, 2], max_tokens = 24)
  aggregate smollm2 (temperature = 0.3, seed = 3, max_tokens = 32)
}

judge scorer {
  model = smollm2
  protocol = single
  max_tokens = 48
}
"""


def test_a_local_judged_run_records_a_verdict_for_every_turn(tmp_path, capsys):
    path = tmp_path / "local.moa"
    path.write_text(SOURCE)
    out = tmp_path / "report"
    code = cli.main(["eval", str(path), "--pipelines", "tiny", "--prompts", "mt_bench",
                     "--limit", "1", "--judge", "scorer", "--report", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    records = read_trace(out / "trace.jsonl")
    quality = [r for r in records if r["type"] == "quality"]
    assert [(r["query_id"], r["turn"]) for r in sorted(quality, key=lambda r: r["turn"])] == \
        [("81", 1), ("81", 2)]
    for record in quality:
        assert record["error"] is None and record["protocol"] == "single"
        assert (record["score"] is not None) == record["parsed"]
        if record["parsed"]:
            assert 1 <= record["score"] <= 10
    judge_calls = [r for r in records if r["type"] == "call" and r["pipeline"] == "judge:scorer"]
    assert len(judge_calls) == 2 and all(r["status"] == "ok" for r in judge_calls)
    document = json.loads((out / "report.json").read_text())
    row = document["pipelines"][0]
    assert row["pipeline"] == "tiny" and row["answered"] == 1
    assert row["judged"] + row["unparsed"] == 2
