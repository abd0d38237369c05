"""Reference log-probabilities for dfpo, computed once by a Ray Data batch pass over the frozen SFT model.

Why a batch pass rather than a frozen copy in every train worker: the copy would double each
worker's model memory (decisive for a 7B model under ZeRO-3) and recompute the same numbers on
every epoch and every restart. The pass runs once, its result is written to Parquet next to the
stage, and a resumed or repeated dfpo run reads it back. On a private local Ray the driver scores
(every CPU is free before the stage starts), as the evaluation generates there: a one-actor pool
started a process, imported torch and loaded the model for each of the stage's two splits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pedray import storage
from pedray.cluster import map_without_restarts, own_tasks_hold_the_cpus, private
from pedray.losses import labelled_sequence_logps, next_token_targets
from pedray.model.build import load_model, load_tokenizer
from pedray.model.selective import head_only_at
from pedray.train.stages import collate_pairs


class ReferenceScorer:
    """Ray Data callable: adds `ref_chosen_logps` and `ref_rejected_logps` to preference batches."""

    def __init__(self, model_dir: str, trust_remote_code: bool = False) -> None:
        self.model = load_model(model_dir, trust_remote_code=trust_remote_code).eval()
        self.pad_id = load_tokenizer(model_dir, trust_remote_code).pad_token_id

    @torch.no_grad()
    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        size = len(batch["chosen_input_ids"])
        placeholder = np.zeros(size, dtype=np.float32)
        tensors, _ = collate_pairs(dict(batch, ref_chosen_logps=placeholder, ref_rejected_logps=placeholder),
                                   torch.device("cpu"), self.pad_id)
        keep, targets = next_token_targets(tensors["labels"])
        with head_only_at(self.model, keep):  # the head on the answers' tokens only, as dfpo's own loss
            logits = self.model(input_ids=tensors["input_ids"], use_cache=False).logits
        logps, _ = labelled_sequence_logps(logits, targets, keep)
        out = dict(batch)
        out["ref_chosen_logps"] = logps[:size].numpy().astype(np.float32)
        out["ref_rejected_logps"] = logps[size:].numpy().astype(np.float32)
        return out


def score_reference(dataset, model_dir: str | Path, out: str | Path, batch_size: int = 16,
                    trust_remote_code: bool = False, here: bool | None = None) -> str | Path:
    """Write the preference dataset with reference log-probs to `out` (Parquet, a folder or URI) once;
    reuse it after. `here`: score in this process (default: on a private Ray; a chain's shared train
    worker, `pedray.train.group`, has torch and transformers loaded already) rather than in an actor."""
    marker = storage.join(out, "_complete")
    if storage.read_text(marker) is not None:
        return out
    if private() if here is None else here:
        _score_here(dataset, model_dir, out, batch_size, trust_remote_code)
        storage.write_text(marker, "ok")
        return out
    import ray

    scored = map_without_restarts(dataset, ReferenceScorer, batch_size=batch_size, batch_format="numpy",
                                  compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1,
                                  fn_constructor_kwargs={"model_dir": str(model_dir),
                                                         "trust_remote_code": trust_remote_code})
    path, filesystem = storage.arrow(out)
    with own_tasks_hold_the_cpus():
        scored.write_parquet(path, filesystem=filesystem)
    storage.write_text(marker, "ok")
    return out


def _score_here(dataset, model_dir: str | Path, out: str | Path, batch_size: int, trust_remote_code: bool) -> None:
    """`score_reference` in this process: the same scorer over the same batches, one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyarrow import fs

    scorer = ReferenceScorer(str(model_dir), trust_remote_code)
    tables = []
    for table in dataset.iter_batches(batch_size=batch_size, batch_format="pyarrow"):
        scored = scorer({name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names})
        for name in ("ref_chosen_logps", "ref_rejected_logps"):
            table = table.append_column(name, pa.array(scored[name]))
        tables.append(table)
    if not tables:
        raise ValueError(f"no preference pairs to score for {storage.display(out)}")
    path, filesystem = storage.arrow(out)
    filesystem = filesystem or fs.LocalFileSystem()
    filesystem.create_dir(path, recursive=True)
    pq.write_table(pa.concat_tables(tables), f"{path}/part-00000.parquet", filesystem=filesystem)


def read_scored(folder: str | Path):
    """The scored preference pairs, streamed back from Parquet.

    Through Ray Data's first Parquet reader: 2.60's default (DataSourceV2) starts a pool of footer-reading
    actors for every read, a process each (two here, per split), made for datasets of many files. These
    are the few files pedray wrote itself; the first reader lists them in the driver. dfpo's start: 0.05
    instead of 1.0-1.5 s for both splits, and four processes fewer."""
    import ray.data

    path, filesystem = storage.arrow(folder)
    context = ray.data.DataContext.get_current()
    default, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        return ray.data.read_parquet(path, filesystem=filesystem)
    finally:
        context.use_datasource_v2 = default
