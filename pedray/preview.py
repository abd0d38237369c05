"""`pedray data`, a command over a stage (beside `pedray.tune`): streams a stage's dataset through Ray Data
and previews what a training worker would see."""

from __future__ import annotations

from typing import Any

import numpy as np

from pedray.cluster import ensure_ray
from pedray.config import load_recipe
from pedray.data.columns import IGNORE_INDEX
from pedray.model.build import load_tokenizer
from pedray.train.stages import STAGE_SPECS  # the command's one question to the stage registry
from pedray.workspace import base_model_dir, stage_dataset


def describe_row(tokenizer, input_ids: np.ndarray, labels: np.ndarray) -> dict[str, str]:
    """Decoded text of a row and of the part that carries loss."""
    return {"text": tokenizer.decode(input_ids.tolist()),
            "learned": tokenizer.decode(input_ids[labels != IGNORE_INDEX].tolist())}


def inspect_stage(config: str | None, overrides: list[str], stage: str, rows: int = 1) -> dict[str, Any]:
    recipe = load_recipe(config, overrides)
    ensure_ray()
    model_dir = base_model_dir(recipe)
    tokenizer = load_tokenizer(model_dir)
    dataset = stage_dataset(recipe, STAGE_SPECS[stage].data, model_dir)
    report: dict[str, Any] = {"stage": stage, "model": str(model_dir), "rows": 0, "samples": []}
    real = total = 0
    for batch in dataset.iter_batches(batch_size=64, batch_format="numpy"):
        pairs = "chosen_input_ids" in batch  # preference rows (dfpo): a chosen and a rejected answer
        ids = batch["chosen_input_ids"] if pairs else batch["input_ids"]
        report["rows"] += len(ids)
        if pairs:
            real += sum(len(x) for x in ids) + sum(len(x) for x in batch["rejected_input_ids"])
        else:
            real += int(batch["tokens"].sum())
            total += ids.size
        for i in range(min(rows - len(report["samples"]), len(ids))):  # the first `rows` rows, over batches
            if pairs:
                report["samples"].append({"chosen": describe_row(tokenizer, ids[i], batch["chosen_labels"][i]),
                                          "rejected": tokenizer.decode(batch["rejected_input_ids"][i][-40:].tolist())})
            else:
                report["samples"].append(describe_row(tokenizer, ids[i], batch["labels"][i]))
    report["tokens"] = real
    if total:
        report["non_padding_fraction"] = round(real / total, 4)
    return report
