"""Ray Data pipelines on real local Ray: packed sft/cpt rows, hybrid mixing, preference pairs, determinism."""

import numpy as np
import pytest

from pedray.config import DataConfig
from pedray.data.columns import IGNORE_INDEX
from pedray.data.pipeline import cpt_dataset, pref_dataset, sft_dataset

CFG = DataConfig(seq_len=512, batch_size=256, max_prompt_len=128, hybrid_ratio=0.5, seed=0)


def _collect(dataset):
    return list(dataset.iter_batches(batch_size=32, batch_format="numpy"))


def test_sft_rows_are_packed_masked_and_deterministic(ray_local, small_corpus, tiny_model_dir, tiny_tokenizer):
    first = _collect(sft_dataset([small_corpus], str(tiny_model_dir), CFG))
    again = _collect(sft_dataset([small_corpus], str(tiny_model_dir), CFG))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    ids = np.concatenate([b["input_ids"] for b in first])
    labels = np.concatenate([b["labels"] for b in first])
    tokens = np.concatenate([b["tokens"] for b in first])
    assert ids.shape[1] == 512 and ids.dtype == np.int32
    assert tokens.sum() / ids.size >= 0.9
    learned = tiny_tokenizer.decode(ids[0][labels[0] != IGNORE_INDEX].tolist())
    assert "<|im_start|>" not in learned and "<|im_end|>" in learned  # prompts masked, answers end with EOS
    other_seed = _collect(sft_dataset([small_corpus], str(tiny_model_dir), DataConfig(seq_len=512, max_prompt_len=128, seed=1)))
    assert not np.array_equal(first[0]["input_ids"], other_seed[0]["input_ids"])


def _documents(batches, tokenizer):
    """Decoded documents of packed rows, split where position_ids restart (padding left out)."""
    for batch in batches:
        for ids, positions, real in zip(batch["input_ids"], batch["position_ids"], batch["tokens"]):
            starts = list(np.flatnonzero(positions == 0)) + [len(ids)]
            for start, end in zip(starts[:-1], starts[1:]):
                if start < real:
                    yield tokenizer.decode(ids[start:end].tolist())


@pytest.mark.parametrize("shuffle", ["global", "stream"])
def test_cpt_stream_mixes_flattened_instructions_at_the_ratio(ray_local, small_corpus, tiny_model_dir, tiny_tokenizer,
                                                              shuffle):
    cfg = DataConfig(seq_len=512, batch_size=256, max_prompt_len=128, hybrid_ratio=0.5, seed=0, shuffle=shuffle)
    batches = _collect(cpt_dataset([small_corpus], str(tiny_model_dir), cfg))
    documents = list(_documents(batches, tiny_tokenizer))
    flattened = sum(1 for d in documents if d.startswith("问："))
    texts = len(documents) - flattened
    assert texts == sum(1 for _ in open(small_corpus / "text_train.jsonl", encoding="utf-8"))
    assert 0.4 < flattened / texts < 0.6  # hybrid_ratio 0.5 flattened instructions per document
    assert all("<|im_start|>" not in d and d.endswith("<|im_end|>") for d in documents)
    labels = np.concatenate([b["labels"] for b in batches])
    assert (labels != IGNORE_INDEX).mean() > 0.85  # cpt learns every real token


def test_preference_pairs_are_tokenised(ray_local, small_corpus, tiny_model_dir):
    batches = _collect(pref_dataset([small_corpus], str(tiny_model_dir), CFG))
    pairs = sum(len(b["chosen_input_ids"]) for b in batches)
    assert pairs == sum(1 for _ in open(small_corpus / "pref_train.jsonl", encoding="utf-8"))
    chosen, labels = batches[0]["chosen_input_ids"][0], batches[0]["chosen_labels"][0]
    assert len(chosen) == len(labels) and (labels == IGNORE_INDEX).sum() > 0 and (labels != IGNORE_INDEX).sum() > 0


def _operators(dataset) -> set[str]:
    """Names of every operator in a dataset's logical plan."""
    names, stack = set(), [dataset._logical_plan.dag]
    while stack:
        op = stack.pop()
        names.add(op.name)
        stack.extend(op.input_dependencies)
    return names


def test_stream_mode_is_deterministic_and_differs_from_file_order(ray_local, small_corpus, tiny_model_dir):
    """No all-to-all exchange, yet the same seed gives the same rows and the records are reordered."""
    cfg = DataConfig(seq_len=512, batch_size=64, max_prompt_len=128, seed=0, shuffle="stream")
    first = _collect(sft_dataset([small_corpus], str(tiny_model_dir), cfg))
    again = _collect(sft_dataset([small_corpus], str(tiny_model_dir), cfg))
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) for a, b in zip(first, again))
    assert "RandomShuffle" not in _operators(sft_dataset([small_corpus], str(tiny_model_dir), cfg))
    assert "RandomShuffle" in _operators(sft_dataset([small_corpus], str(tiny_model_dir), CFG))
    preference = _collect(pref_dataset([small_corpus], str(tiny_model_dir), cfg))
    assert sum(len(b["chosen_input_ids"]) for b in preference) > 0


def test_pedray_data_previews_as_many_rows_as_asked_for_pairs_too(ray_local, small_corpus, tiny_model_dir):
    """`pedray data --rows N` over more than one batch of 64 (dfpo raised IndexError at 65)."""
    from pedray.preview import inspect_stage

    overrides = [f"data.corpus_dir={small_corpus}", f"model.path={tiny_model_dir}", "data.seq_len=256", "data.max_prompt_len=128"]
    pairs = inspect_stage(None, overrides, "dfpo", rows=65)
    assert len(pairs["samples"]) == 65 and pairs["rows"] >= 65
    assert all(sample["chosen"]["learned"] and sample["rejected"] for sample in pairs["samples"])
    rows = inspect_stage(None, overrides, "sft", rows=70)
    assert len(rows["samples"]) == 70 and 0 < rows["non_padding_fraction"] <= 1


def test_reference_scores_in_the_driver_equal_the_actor_pool_s(ray_local, tiny_model_dir, small_corpus, tmp_path,
                                                                monkeypatch):
    """dfpo's reference log-probs: scored in the driver (a private Ray) or by a Ray Data actor (a cluster),
    the same pairs with the same numbers, read back alike."""
    from pedray.train import reference

    pairs = pref_dataset([small_corpus], str(tiny_model_dir), CFG).limit(12)
    pooled = reference.read_scored(reference.score_reference(pairs, tiny_model_dir, tmp_path / "pool", batch_size=5))
    monkeypatch.setattr(reference, "private", lambda: True)
    here = reference.read_scored(reference.score_reference(pairs, tiny_model_dir, tmp_path / "here", batch_size=5))
    assert len(list((tmp_path / "pool").glob("*.parquet"))) >= 1 and (tmp_path / "here" / "_complete").is_file()
    pooled, here = ({tuple(row["chosen_input_ids"]): row for row in d.take_all()} for d in (pooled, here))
    assert len(here) == 12 and here.keys() == pooled.keys()
    for key, row in here.items():
        assert set(row) == set(pooled[key])
        assert row["ref_chosen_logps"] < 0 and row["ref_rejected_logps"] < 0
        assert np.isclose(row["ref_chosen_logps"], pooled[key]["ref_chosen_logps"], atol=1e-4)
        assert np.isclose(row["ref_rejected_logps"], pooled[key]["ref_rejected_logps"], atol=1e-4)


INTERRUPTED_LOAD = """
import _thread, importlib.abc, signal, sys

# as in a Ray worker; a process started in the background by a shell inherits SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)

class InterruptOnce(importlib.abc.MetaPathFinder):
    fired = False

    def find_spec(self, name, path=None, target=None):  # Ray's cancel, as it lands mid-import
        if name == "accelerate.big_modeling" and not InterruptOnce.fired:
            InterruptOnce.fired = True
            _thread.interrupt_main()

sys.meta_path.insert(0, InterruptOnce())
from pedray.data.pipeline import _tokenizer

try:
    _tokenizer(sys.argv[1])
except KeyboardInterrupt:
    print("cancelled", flush=True)
assert InterruptOnce.fired
print(len(_tokenizer(sys.argv[1])("鼻塞")["input_ids"]) > 0)
"""


def test_a_task_cancelled_during_its_first_tokenizer_load_leaves_its_worker_usable(tiny_model_dir):
    """Ray cancels a running task by interrupting its worker's main thread (Ray Data does so when an
    iteration stops early). Landing inside transformers' first import, the interrupt used to leave
    accelerate half-imported, and every later task in that process failed with an ImportError (CI, a
    worker reused by the next test). Now the load completes, the cancel still happens, and the next load
    works."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INTERRUPTED_LOAD, str(tiny_model_dir)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["cancelled", "True"]


def test_a_one_worker_stage_reads_the_rows_ray_trains_split_would(ray_local, small_corpus, tiny_model_dir):
    """`stream.train_stream` hands a one-worker stage its dataset itself instead of Ray Train's split into one
    part (two processes fewer a stage): the same rows in the same order, and the same again next epoch
    (a resumed stage skips the micro-batches it trained on by counting them)."""
    from ray.data import DataContext

    from pedray.train.stream import micro_batches as _batches, train_stream

    dataset = sft_dataset([small_corpus], str(tiny_model_dir), CFG)
    (split,) = dataset.streaming_split(1, equal=True)
    own = train_stream({"train_data": dataset, "data_context": DataContext.get_current()})
    rows = len(np.concatenate([b["input_ids"] for b in split.iter_batches(batch_size=4, batch_format="numpy")]))
    count = 2 * (rows // 4 + (rows % 4 > 0)) + 1  # two epochs and the first micro-batch of a third
    theirs, mine = _batches(split, 4, skip=0), _batches(own, 4, skip=0)
    pairs = [(next(theirs), next(mine)) for _ in range(count)]
    theirs.close(), mine.close()  # their executors end now, not during Ray's shutdown at the session's end
    assert all(np.array_equal(a["input_ids"], b["input_ids"]) and np.array_equal(a["labels"], b["labels"])
               for a, b in pairs)
    assert np.array_equal(pairs[0][1]["input_ids"], pairs[-1][1]["input_ids"])  # each epoch the same order
    skipped = next(_batches(train_stream({"train_data": dataset}), 4, skip=3))
    assert np.array_equal(skipped["input_ids"], pairs[3][1]["input_ids"])

    class Counted:
        """The stream, counting how often its pipeline runs (one `iter_batches` call an epoch)."""

        def __init__(self, stream):
            self.stream, self.runs = stream, 0

        def iter_batches(self, **kwargs):
            self.runs += 1
            return self.stream.iter_batches(**kwargs)

    # data.replay_mb: the first epoch kept and replayed gives the same micro-batches, from one pipeline run;
    # an epoch over the limit streams every time; a resumed stage skips the same micro-batches.
    for limit, runs in ((64 << 20, 1), (1000, 3), (0, 3)):
        counted = Counted(train_stream({"train_data": dataset}))
        batches = _batches(counted, 4, skip=0, replay_bytes=limit)
        again = [next(batches) for _ in range(count)]
        batches.close()
        assert all(np.array_equal(a["input_ids"], b["input_ids"]) for (a, _), b in zip(pairs, again)), limit
        assert counted.runs == runs, (limit, counted.runs)
    resumed = _batches(Counted(train_stream({"train_data": dataset})), 4, skip=count - 2, replay_bytes=64 << 20)
    assert all(np.array_equal(next(resumed)["labels"], a["labels"]) for a, _ in pairs[-2:])
    resumed.close()
