"""Evaluation: question sets and their errors, objective scoring, batched/Ray generation, reports, `pedray eval`."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from pedray.config.schema import EvalConfig, LoraConfig
from pedray.eval.score import accuracy, score_rows
from pedray.eval.sets import heldout_items, load_sets, pediabench_items
from pedray.ingest.readers import InputError

REPO = Path(__file__).resolve().parents[1]


def _xlsx(path: Path, header: list[str], rows: list[list]) -> Path:
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)
    return path


@pytest.fixture
def bench_files(tmp_path) -> Path:
    """A small PediaBench-layout folder of our own: choice, true/false and open questions."""
    folder = tmp_path / "bench"
    folder.mkdir()
    _xlsx(folder / "multiple_choice.xlsx", ["Disease Groups", "questions", "options", "answers", "explanations"], [
        ["呼吸系统疾病", "婴儿呼吸增快的界值是", "A.每分钟30次\nB.每分钟50次\nC.每分钟80次", "B", ""],
        ["消化系统疾病", "小儿腹泻时需要注意哪些方面", "A.补液\nB.禁食三天\nC.观察尿量\nD.继续喂养", "ACD", None],
    ])
    _xlsx(folder / "true_or_false.xlsx", ["Disease Groups", "questions", "answers", "explanations"], [
        ["新生儿疾病", "新生儿发热都可以在家观察。", "错", ""],
        ["营养性疾病", "维生素D缺乏可引起佝偻病。", "对", ""],
    ])
    _xlsx(folder / "essay_short_answer.xlsx", ["Disease Groups", "questions", "answers"], [
        ["呼吸系统疾病", "孩子咳嗽一周了怎么办？", "应就医查明原因，注意休息和补充水分。"],
    ])
    return folder


def test_pediabench_layout_sets_have_kinds_references_and_prompts(bench_files):
    items = load_sets([bench_files])
    by_id = {item["id"]: item for item in items}
    assert len(items) == 5
    assert by_id["multiple_choice-3"]["kind"] == "choice" and by_id["multiple_choice-3"]["reference"] == "ACD"
    assert by_id["true_or_false-2"]["reference"] == "错" and by_id["true_or_false-3"]["reference"] == "对"
    essay = by_id["essay_short_answer-2"]
    assert essay["kind"] == "text" and essay["task"] == "medkqa" and essay["group"] == "呼吸系统疾病"
    messages = json.loads(by_id["multiple_choice-2"]["messages"])
    assert messages[0]["role"] == "system" and "B.每分钟50次" in messages[1]["content"]
    assert "答案" in messages[1]["content"]  # the prompt asks for the answer format we extract


def test_bad_eval_inputs_name_the_file_and_the_expected_layout(tmp_path):
    with pytest.raises(InputError, match=r"missing\.xlsx: no such file; expected a PediaBench-layout"):
        pediabench_items(tmp_path / "missing.xlsx")
    wrong = _xlsx(tmp_path / "wrong.xlsx", ["question", "answer"], [["q", "a"]])
    with pytest.raises(InputError, match=r"wrong\.xlsx: expected PediaBench columns 'questions' and 'answers'"):
        pediabench_items(wrong)
    empty = _xlsx(tmp_path / "empty.xlsx", ["questions", "answers"], [])
    with pytest.raises(InputError, match=r"empty\.xlsx: no usable questions"):
        pediabench_items(empty)
    jsonl = tmp_path / "layout.jsonl"
    jsonl.write_text(json.dumps({"prompt": "x", "response": "y"}) + "\n")
    with pytest.raises(InputError, match=r"layout\.jsonl: columns \['prompt', 'response'\]; expected"):
        pediabench_items(jsonl)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: unsupported file type"):
        pediabench_items(tmp_path / "notes.txt")
    with pytest.raises(InputError, match="no held-out questions"):
        load_sets([], [tmp_path])


def test_parent_questions_route_by_their_task_column(tmp_path):
    """jobs/eval/parent_questions.jsonl: questions in a parent's own words, with a reference written from our
    knowledge base; each row names the expert the chat's router sends it to (a care question is `general`)."""
    shipped = Path(__file__).resolve().parents[1] / "jobs" / "eval" / "parent_questions.jsonl"
    items = pediabench_items(shipped)
    assert len(items) == 16 and {i["kind"] for i in items} == {"text"}
    assert Counter(i["task"] for i in items) == {"general": 9, "dialogue": 4, "evidiag": 2, "medkqa": 1}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"questions": "孩子发烧怎么办？", "answers": "多喝水", "task": "chat"}, ensure_ascii=False) + "\n")
    with pytest.raises(InputError, match=r"bad\.jsonl: row 1: task 'chat' is not one of"):
        pediabench_items(bad)
    plain = tmp_path / "plain.jsonl"  # no task column: medkqa, as before
    plain.write_text(json.dumps({"questions": "孩子发烧怎么办？", "answers": "多喝水"}, ensure_ascii=False) + "\n")
    assert pediabench_items(plain)[0]["task"] == "medkqa"


def test_heldout_items_take_the_first_of_each_task(small_corpus):
    items = heldout_items([small_corpus], limit=3)
    tasks = [item["task"] for item in items]
    assert sorted(set(tasks)) == sorted({"medkqa", "evidiag", "trerecom", "dialogue", "general"})
    assert all(tasks.count(t) == 3 for t in set(tasks))
    dialogue = next(item for item in items if item["task"] == "dialogue")
    messages = json.loads(dialogue["messages"])
    assert messages[-1]["role"] == "user" and len(messages) >= 4  # earlier turns kept, last answer is the reference


def test_objective_scoring_golden_values():
    rows = [
        {"set": "mc", "kind": "choice", "group": "g1", "reference": "ACD", "prediction": "答案：A、C、D"},
        {"set": "mc", "kind": "choice", "group": "g1", "reference": "B", "prediction": "B。因为……"},
        {"set": "mc", "kind": "choice", "group": "g2", "reference": "B", "prediction": "我不确定"},
        {"set": "mc", "kind": "choice", "group": "g2", "reference": "AC", "prediction": "答案：A"},
        {"set": "tf", "kind": "judgement", "group": "", "reference": "错", "prediction": "答案：错误，应当就医"},
        {"set": "tf", "kind": "judgement", "group": "", "reference": "对", "prediction": "不正确"},
    ]
    for row in rows:
        row["task"] = "medkqa"
    scores = score_rows(rows)
    mc = scores["mc"]
    assert mc["overall"] == {"accuracy": 50.0, "correct": 2, "samples": 4, "unparseable": 1}
    assert mc["by_group"]["g1"]["accuracy"] == 100.0 and mc["by_group"]["g2"]["accuracy"] == 0.0
    assert mc["by_answers"]["single"]["correct"] == 1 and mc["by_answers"]["multiple"]["correct"] == 1
    assert scores["tf"]["overall"] == {"accuracy": 50.0, "correct": 1, "samples": 2, "unparseable": 0}
    assert accuracy([]) == {"accuracy": 0.0, "correct": 0, "samples": 0, "unparseable": 0}


def _mouse_folder(tiny_model_dir, out: Path, gating: str) -> Path:
    from pedray.model.build import load_model
    from pedray.model.mouse import attach_mouse
    from pedray.model.mouse_io import save_mouse

    model = attach_mouse(load_model(tiny_model_dir), LoraConfig(rank=4, num_experts=2, gating=gating))
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.adapter_state().values():
            parameter.normal_(std=0.3)
    return save_mouse(model, out, base_model=str(tiny_model_dir))


def test_batched_generation_matches_one_at_a_time(tiny_model_dir, small_corpus):
    """Left padding and the KV cache change nothing: batched greedy answers equal one-at-a-time ones."""
    from pedray.eval.generate import generate_local

    items = heldout_items([small_corpus], limit=2)
    single = {r["id"]: r for r in generate_local(items, tiny_model_dir, 12, batch_size=1)}
    batched = {r["id"]: r for r in generate_local(items, tiny_model_dir, 12, batch_size=8)}
    assert single.keys() == batched.keys()
    assert [single[k]["prediction"] for k in single] == [batched[k]["prediction"] for k in single]
    assert all(r["new_tokens"] > 0 for r in single.values())


def test_task_gated_mouse_answers_equal_its_merged_per_task_model(tiny_model_dir, small_corpus, tmp_path):
    """A MoUSE adapter folder is loaded over its base and routed by each question's task: its answers
    equal those of the plain model merged for that task."""
    from pedray.eval.generate import generate_local
    from pedray.model.build import load_tokenizer
    from pedray.model.mouse_io import load_mouse, merge_tasks

    adapter = _mouse_folder(tiny_model_dir, tmp_path / "adapter", "task")
    items = heldout_items([small_corpus], limit=1)
    routed = {r["id"]: r["prediction"] for r in generate_local(items, adapter, 10, batch_size=8)}
    merged = merge_tasks(load_mouse(adapter), tmp_path / "merged", load_tokenizer(tiny_model_dir))
    plain = {}
    for item in items:
        plain.update({r["id"]: r["prediction"] for r in generate_local([item], merged[item["task"]], 10)})
    assert routed == plain
    tasks = {item["task"] for item in items}
    assert len({routed[i["id"]] for i in items}) > 1 and len(tasks) == 5


def test_ray_data_actor_pool_gives_the_same_answers_as_in_process(ray_local, tiny_model_dir, small_corpus):
    from pedray.eval.generate import generate_dataset, generate_local

    items = heldout_items([small_corpus], limit=2)
    local = {r["id"]: r["prediction"] for r in generate_local(items, tiny_model_dir, 8, batch_size=4)}
    pooled = generate_dataset(items, tiny_model_dir, 8, batch_size=4, actors=2)
    assert {r["id"]: r["prediction"] for r in pooled} == local
    assert {r["set"] for r in pooled} == {"heldout"}


def test_eval_cli_writes_json_markdown_chart_and_answers(tmp_path, bench_files, small_corpus, tiny_model_dir):
    out = tmp_path / "report"
    command = [sys.executable, "-m", "pedray", "eval", "--model", str(tiny_model_dir), "--sets", str(bench_files),
               "--out", str(out), f"data.corpus_dir={small_corpus}", "eval.limit=2", "eval.max_new_tokens=6",
               "eval.actors=1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert set(report["scores"]) == {"heldout", "multiple_choice", "true_or_false", "essay_short_answer"}
    assert report["scores"]["heldout"]["overall"]["samples"] == 10 and len(report["scores"]["heldout"]["by_task"]) == 5
    assert report["scores"]["multiple_choice"]["overall"]["samples"] == 2
    assert report["generation"]["answers"] == 15 == len((out / "answers.jsonl").read_text().splitlines())
    assert "heldout ROUGE-L" in report["headline"] and "true_or_false accuracy" in report["headline"]
    markdown = (out / "report.md").read_text()
    assert "## multiple_choice" in markdown and "| 呼吸系统疾病 |" in markdown and "unparseable" in markdown
    assert "ROUGE: the `rouge` package, as the paper's code" in markdown and report["settings"]["rouge"] == "paper"
    assert report["scores"]["heldout"]["overall"]["rouge"] == "paper"
    assert (out / "report.png").stat().st_size > 1000
    assert "## heldout" in done.stdout

    bad = subprocess.run([sys.executable, "-m", "pedray", "eval", "--model", str(tiny_model_dir), "--sets",
                          str(tmp_path / "nope.xlsx"), "--no-heldout"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "nope.xlsx: no such file; expected a PediaBench-layout" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_eval_config_is_checked():
    with pytest.raises(ValueError, match="eval.batch_size"):
        EvalConfig(batch_size=0)


def test_evaluation_runs_in_the_driver_on_a_private_ray_and_in_a_pool_elsewhere(monkeypatch):
    from pedray.eval import run

    assert not run.in_driver(EvalConfig())  # no Ray that this process started: the pool
    monkeypatch.setattr(run, "private", lambda: True)
    assert run.in_driver(EvalConfig())
    assert not run.in_driver(EvalConfig(actors=1))  # a pool asked for by its size
    assert not run.in_driver(EvalConfig(where="actors")) and run.in_driver(EvalConfig(where="driver", actors=1))
    with pytest.raises(ValueError, match="eval.where"):
        EvalConfig(where="gpu")


def test_chain_evaluation_leaves_the_base_out_when_told_and_answers_in_the_driver(
        tmp_path, small_corpus, tiny_model_dir, monkeypatch):
    from pedray.config import load_recipe
    from pedray.eval import run
    from pedray.eval.run import ChainEvaluation

    def no_pool(*args, **kwargs):
        raise AssertionError("eval.where=driver started a Ray Data pool")

    monkeypatch.setattr(run, "generate_dataset", no_pool)
    settings = [f"data.corpus_dir={small_corpus}", "eval.limit=1", "eval.max_new_tokens=4", "eval.where=driver"]
    skipped = ChainEvaluation(load_recipe(None, settings + [f"output_dir={tmp_path / 'a'}", "eval.base=false"]),
                              tiny_model_dir)
    assert skipped.reports == {} and not (tmp_path / "a" / "eval" / "base").exists()
    kept = ChainEvaluation(load_recipe(None, settings + [f"output_dir={tmp_path / 'b'}"]), tiny_model_dir)
    assert list(kept.reports) == ["base"] and kept.reports["base"]["generation"]["answers"] == 5
    assert (tmp_path / "b" / "eval" / "base" / "answers.jsonl").is_file()


def test_chain_evaluation_answers_in_the_background_and_raises_its_error_when_waited_for(
        tmp_path, small_corpus, tiny_model_dir, monkeypatch):
    """In the driver a stage's evaluation runs while the next stage starts: `stage` returns at once, `finish`
    waits for it, and an evaluation's error is raised there rather than lost."""
    import threading

    from pedray.config import load_recipe
    from pedray.eval import run
    from pedray.eval.run import ChainEvaluation

    threads, real = [], run.generate_local

    def recorded(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(run, "generate_local", recorded)
    settings = [f"data.corpus_dir={small_corpus}", "eval.limit=1", "eval.max_new_tokens=4", "eval.where=driver",
                "eval.base=false", f"output_dir={tmp_path}"]
    evaluation = ChainEvaluation(load_recipe(None, settings), tiny_model_dir)
    manifest = {"paths": {"model": str(tiny_model_dir)}, "fingerprint": "sft-1"}
    evaluation.stage("sft", manifest)
    assert evaluation.pending is not None
    table = evaluation.finish()
    assert threads and threads[0].startswith("pedray-eval") and threads[0] != threading.main_thread().name
    assert "| sft |" in table and (tmp_path / "sft" / "eval" / "answers.jsonl").is_file()

    def broken(*args, **kwargs):
        raise RuntimeError("the model folder is gone")

    monkeypatch.setattr(run, "generate_local", broken)
    evaluation.stage("dfpo", dict(manifest, fingerprint="dfpo-1"))
    with pytest.raises(RuntimeError, match="the model folder is gone"):
        evaluation.finish()
