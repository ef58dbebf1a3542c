"""What checked declarations mean: units, defaults, derivation and context windows."""

from __future__ import annotations

import pytest

import moac

PROVIDER = """
provider p {
  kind = openai
  base_url = "http://127.0.0.1:9/v1"
  api_key = env P_KEY
}
"""


def compile_text(body: str) -> moac.Program:
    return moac.compile_string(PROVIDER + body, "t.moa")


def codes(body: str) -> list[str]:
    with pytest.raises(moac.MoaError) as caught:
        compile_text(body)
    return [d.code for d in caught.value.diagnostics]


def test_model_units_are_normalised():
    program = compile_text("""
model a = p "org/a" {
  price = $5.00/M in, $15.00/M out
  params = 39B active, 141B total
  context = 32k
  speed = 250ms ttft, 35 tok/s, 1500 tok/s prefill
  quality = 57.5
  length = 2k
}
""")
    model = program.models["a"]
    assert (model.usd_per_m_input, model.usd_per_m_output) == (5.0, 15.0)
    assert (model.active_params_b, model.total_params_b) == (39.0, 141.0)
    assert model.context_tokens == 32 * 1024
    assert model.ttft_s == pytest.approx(0.25)
    assert model.output_tokens_per_s == 35.0
    assert model.prefill_tokens_per_s == 1500.0
    assert model.answer_tokens == 2048
    assert model.quality == 57.5


def test_single_price_applies_to_both_directions_and_small_models_use_M():
    program = compile_text('model a = p "a" {\n price = $0.90/M\n params = 135M\n'
                           ' context = 8192\n}\n')
    model = program.models["a"]
    assert model.usd_per_m_input == model.usd_per_m_output == 0.9
    assert model.active_params_b == pytest.approx(0.135)
    assert model.total_params_b == pytest.approx(0.135)
    assert model.context_tokens == 8192


def test_provider_defaults_and_secret_is_only_a_name():
    program = compile_text('model a = p "a" {\n price = $1/M\n params = 7B\n context = 4k\n}\n')
    provider = program.providers["p"]
    assert provider.api_key_env == "P_KEY"
    assert provider.parallel >= 1 and provider.timeout_s > provider.connect_timeout_s


@pytest.mark.parametrize("setting, code", [
    ("price = $0.90", "E203"),          # not per million tokens
    ("price = $1/M in", "E207"),        # in without out
    ("price = $1/M in, $2/M sideways", "E202"),
    ("params = 10B active, 5B total", "E206"),
    ("context = 32q", "E203"),          # unknown unit
    ("context = 1.5", "E202"),          # not whole
    ("speed = 35", "E203"),             # a rate needs its unit: 35 tok/s
    ("quality = -3", "E206"),
])
def test_bad_model_settings(setting, code):
    base = {"price": "$1/M", "params": "7B", "context": "4k"}
    key = setting.split(" = ")[0]
    lines = [setting] + [f"{k} = {v}" for k, v in base.items() if k != key]
    assert code in codes('model a = p "a" {\n' + "\n".join(lines) + "\n}\n")


CATALOG = """
model big = p "big" {
  price = $1/M
  params = 70B
  context = 8k
  quality = 40
}
model small = p "small" {
  price = $0.1/M
  params = 7B
  context = 32k
}
"""


def test_context_window_check_counts_every_answer_at_max_tokens():
    ok = CATALOG + """
pipeline fits {
  layer propose = small x 6 (max_tokens = 512)
  aggregate big (max_tokens = 1024)
}
"""
    compile_text(ok)
    over = CATALOG + """
pipeline overflows {
  layer propose = small x 6 (max_tokens = 2048)
  aggregate big (max_tokens = 1024)
}
"""
    with pytest.raises(moac.MoaSemanticError) as caught:
        compile_text(over)
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "E404"
    assert "6 answers of up to 2,048 tokens" in diagnostic.message
    assert "big's 8k context" in diagnostic.message
    assert diagnostic.span.line == over.count("\n", 0, over.index("aggregate big")) + \
        PROVIDER.count("\n") + 1


def test_a_single_call_larger_than_the_window_is_reported():
    assert codes(CATALOG + "pipeline p1 {\n aggregate big (max_tokens = 9000)\n}\n") == ["E404"]


def test_derived_pipeline_replaces_layers_in_place_and_overrides_settings():
    program = compile_text(CATALOG + """
pipeline base {
  temperature = 0.3
  layer one = [small, big]
  layer two = [small]
  aggregate big
}
pipeline child from base {
  temperature = 0.9
  layer one = [big]
  layer three = [small, small]
  aggregate small
}
""")
    child = program.pipelines["child"]
    assert [layer.name for layer in child.layers] == ["one", "two", "three"]
    assert [a.model for a in child.layers[0].agents] == ["big"]
    assert child.aggregator.model == "small"
    assert child.fallback is None
    assert {a.sampling.temperature for layer in child.layers for a in layer.agents} == {0.9}
    assert program.pipelines["base"].layers[0].agents[0].sampling.temperature == 0.3


def test_per_copy_lists_and_consecutive_seeds():
    program = compile_text(CATALOG + """
pipeline s {
  layer propose = [small x 3 (temperature = [0.2, 0.5, 0.8], seed = 10), big (seed = 4)]
  aggregate big
}
""")
    agents = program.pipelines["s"].layers[0].agents
    assert [a.sampling.temperature for a in agents[:3]] == [0.2, 0.5, 0.8]
    assert [a.sampling.seed for a in agents] == [10, 11, 12, 4]


def test_per_copy_list_must_match_copies():
    assert codes(CATALOG + """
pipeline s {
  layer propose = small x 3 (temperature = [0.2, 0.5])
  aggregate big
}
""") == ["E308"]


def test_budgets_merge_with_the_importing_file_winning(tmp_path):
    (tmp_path / "base.moa").write_text(PROVIDER + CATALOG +
                                       "budget {\n max_usd = $1\n max_latency = 10s\n}\n")
    (tmp_path / "top.moa").write_text('import "base.moa"\nbudget {\n max_usd = $0.02\n}\n')
    program = moac.compile_file(tmp_path / "top.moa")
    assert program.budget.max_usd == 0.02
    assert program.budget.max_latency_s == 10.0


def test_diamond_imports_load_once_and_cycles_are_reported(tmp_path):
    (tmp_path / "shared.moa").write_text(PROVIDER)
    (tmp_path / "a.moa").write_text('import "shared.moa"\n')
    (tmp_path / "b.moa").write_text('import "shared.moa"\n')
    (tmp_path / "top.moa").write_text('import "a.moa"\nimport "b.moa"\n')
    assert "p" in moac.compile_file(tmp_path / "top.moa").providers  # no duplicate 'p'
    (tmp_path / "x.moa").write_text('import "y.moa"\n')
    (tmp_path / "y.moa").write_text('import "x.moa"\n')
    with pytest.raises(moac.MoaSemanticError) as caught:
        moac.compile_file(tmp_path / "x.moa")
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "E104"
    assert diagnostic.path.endswith("y.moa")
    assert "x.moa -> " in diagnostic.message and diagnostic.message.endswith("x.moa")


@pytest.mark.parametrize("url, secret", [
    ("http://127.0.0.1:99999/v1", False),
    ("ftp://example.com", False),
    ("http://user:canary-s3cret@example.com/v1", True),
    ("https://example.com/v1?api-key=canary-s3cret", True),
])
def test_bad_base_urls_are_caught_and_secrets_in_them_never_printed(url, secret):
    text = f'provider q {{\n  kind = openai\n  base_url = "{url}"\n}}\n'
    with pytest.raises(moac.MoaSemanticError) as caught:
        moac.compile_string(text, "u.moa")
    [diagnostic] = caught.value.diagnostics
    assert diagnostic.code == "E602"
    rendered = diagnostic.render()
    assert ("canary-s3cret" in rendered) is False
    assert (url in rendered) is (not secret)


def test_a_literal_api_key_is_masked_in_the_diagnostic():
    text = 'provider q {\n  kind = openai\n  base_url = "http://h/v1"\n  api_key = "sk-canary"\n}\n'
    with pytest.raises(moac.MoaSemanticError) as caught:
        moac.compile_string(text, "k.moa")
    rendered = caught.value.render()
    assert "E601" in rendered and "sk-canary" not in rendered
