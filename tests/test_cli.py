"""`python -m pedray` verbs as a user runs them: output files, summaries, clear errors with exit code 2."""

import json
import subprocess
import sys


def _run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "pedray", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_corpus_and_prep_verbs(tmp_path):
    result = _run("corpus", "--out", str(tmp_path / "c"), "--count", "200")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["files"]["sft_train.jsonl"]["records"] > 150
    source = tmp_path / "in.jsonl"
    source.write_text('{"instruction": "问", "output": "答"}\n{bad\n', encoding="utf-8")
    result = _run("prep", "--input", str(source), "--out", str(tmp_path / "p"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert summary["kept"] == 1 and summary["rejected"] == 1


def test_errors_are_messages_not_tracebacks(tmp_path):
    result = _run("prep", "--input", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "p"))
    assert result.returncode == 2 and "no such file" in result.stderr and "Traceback" not in result.stderr
    result = _run("data", "--stage", "sft", "optim.lrr=1")
    assert result.returncode == 2 and "unknown key 'optim.lrr'" in result.stderr
