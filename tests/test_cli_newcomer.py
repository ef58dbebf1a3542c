"""What a newcomer hits on the command line: every error says what is wrong and what to do,
in one line, with the right exit code and no traceback.

- A batch against a provider refusing its key: the error named once with its count, and
  no more requests sent once the key is known to be wrong.
- Missing API keys: all of them named at once, before any call (run and eval).
- A budget amount the shell ate (`$0.02` unquoted becomes `bash.02`): said so.
- A mistyped command: "did you mean".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fake_openai import serve_in_thread
from test_executor import KEY

import moac.cli.main as cli


def run(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def solo(tmp_path: Path, url: str, *, variable: str = "FAKE_OPENAI_KEY") -> Path:
    path = tmp_path / "solo.moa"
    path.write_text(f'provider p {{\n  kind = openai\n  base_url = "{url}"\n'
                    f'  api_key = env {variable}\n  max_retries = 0\n}}\n'
                    'model a = p "model-a" {\n  price = $1.00/M\n  params = 10B\n'
                    '  context = 32k\n}\n'
                    'pipeline solo {\n  max_tokens = 50\n  aggregate a\n}\n')
    return path


def prompts(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n"
                            for i in range(count)))
    return path


def test_a_refused_key_is_named_once_and_the_batch_stops_sending(tmp_path, capsys,
                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_OPENAI_KEY", "sk-wrong-0000000000000000")
    with serve_in_thread(api_key=KEY) as server:
        path = solo(tmp_path, server.url)
        code, _, err = run(capsys, "run", str(path), "--prompts", str(prompts(tmp_path, 50)),
                           "--concurrency", "4")
        sent = len(server.requests)
    assert code == 1
    assert "0 answered, 50 failed" in err
    assert "the failures, by cause:" in err
    lines = [line for line in err.splitlines() if " × " in line]
    # Two causes: the refusals themselves, and the calls not sent once the key was known bad.
    assert len(lines) == 2, lines
    assert sum(int(line.split("×")[0].split()[-1]) for line in lines) == 50
    assert any("authentication failed" in line for line in lines)
    assert any("not sent: provider 'p' refused the key in FAKE_OPENAI_KEY 3 times in a row "
               "(HTTP 401" in line for line in lines)
    assert sent <= 3 + 4  # the three refusals, and at most what was in flight beside them
    assert "sk-wrong" not in err


def test_every_missing_key_is_named_before_any_call(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for variable in ("KEY_ONE", "KEY_TWO"):
        monkeypatch.delenv(variable, raising=False)
    with serve_in_thread() as server:
        source = (f'provider one {{\n  kind = openai\n  base_url = "{server.url}"\n'
                  '  api_key = env KEY_ONE\n}\n'
                  f'provider two {{\n  kind = openai\n  base_url = "{server.url}"\n'
                  '  api_key = env KEY_TWO\n}\n'
                  'model a = one "a" {\n  price = $1/M\n  params = 1B\n  context = 8k\n}\n'
                  'model b = two "b" {\n  price = $1/M\n  params = 1B\n  context = 8k\n}\n'
                  'pipeline both {\n  layer propose = [a, b]\n  aggregate a\n}\n'
                  'judge j {\n  model = b\n  protocol = single\n}\n')
        (tmp_path / "two.moa").write_text(source)
        code, _, err = run(capsys, "run", "two.moa", "--prompt", "hi")
        assert code == 1 and "KEY_ONE" in err and "KEY_TWO" in err
        assert "2 environment variables are not set" in err
        code, _, err = run(capsys, "eval", "two.moa", "--pipelines", "single:a",
                           "--prompts", str(prompts(tmp_path, 2)), "--judge", "j")
        assert code == 1 and "KEY_ONE" in err and "KEY_TWO" in err
        assert not server.requests


@pytest.mark.parametrize("given", ["bash.02", "-bash.02", "", "zsh"])
def test_an_amount_the_shell_ate_says_so(tmp_path, capsys, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    path = solo(tmp_path, "http://127.0.0.1:9/v1")
    code, _, err = run(capsys, "compile", str(path), f"--max-usd={given}")
    assert code == 2
    assert "the shell may have eaten a '$'" in err and "--max-usd '$0.05'" in err
    code, _, err = run(capsys, "compile", str(path), "--max-usd", "0.x")
    assert code == 2 and "eaten" not in err  # a typo, not the shell


def test_a_mistyped_command_gets_did_you_mean(capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["chek", "x.moa"])
    assert caught.value.code == 2
    assert "did you mean 'check'?" in capsys.readouterr().err


def test_an_empty_prompts_file_is_an_error_not_a_silent_success(tmp_path, capsys,
                                                                monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAKE_OPENAI_KEY", KEY)
    path = solo(tmp_path, "http://127.0.0.1:9/v1")
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = run(capsys, "run", str(path), "--prompts", "empty.jsonl")
    assert code == 1 and "no prompts in it" in err


def test_a_terminal_sees_progress_while_the_proposers_work(tmp_path):
    """stderr a terminal (a pty): a status line per stage and call, wiped before the
    answer; stderr a pipe: only the summary line."""
    import os
    import pty
    import re
    import subprocess
    import sys

    from fake_openai import Behavior
    with serve_in_thread(api_key=KEY, default=Behavior(latency_s=0.2)) as server:
        catalog = (Path(__file__).parent.parent / "examples" / "catalog.moa").read_text()
        catalog = re.sub(r'base_url = "[^"]*"', f'base_url = "{server.url}"', catalog)
        (tmp_path / "catalog.moa").write_text(re.sub(r"\n\s*rpm = \d+", "", catalog))
        for name in ("moa.moa", "moa_lite.moa"):
            (tmp_path / name).write_text(
                (Path(__file__).parent.parent / "examples" / name).read_text())
        env = {**os.environ, "TOGETHER_API_KEY": KEY}
        command = [sys.executable, "-m", "moac", "run", "moa_lite.moa", "--prompt", "Hi"]
        controller, terminal = pty.openpty()
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=terminal)
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        out = process.communicate(timeout=30)[0]
        os.close(controller)
        piped = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=30)
    text = seen.decode("utf-8", "replace")
    assert process.returncode == 0, text
    assert "moac: propose (1/2) · 0/6 calls done" in text
    assert "moac: propose (1/2) · 6/6 calls done" in text
    assert "moac: aggregate (2/2)" in text and "\x1b[K" in text
    assert out.strip()  # the answer, on stdout alone
    assert "calls done" not in piped.stderr.decode() and "moac: ok" in piped.stderr.decode()
