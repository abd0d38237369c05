"""The training loop's data side: a stage's stream on its worker, its micro-batches over epochs (the
first epoch replayed when it fits), the first one pulled while the model loads, and a rank's share of
the held-out rows."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import ray.train


def train_stream(config: dict[str, Any]):
    """The stage's training stream on this worker: Ray Train's split of the "train" dataset, or for a
    one-worker stage the dataset itself (`config["train_data"]`, run by this process's Ray Data
    executor under the driver's DataContext), each `iter_batches` call an epoch in the same seeded order."""
    data = config.get("train_data")
    if data is None:
        return ray.train.get_dataset_shard("train")
    from ray.data import DataContext

    if config.get("data_context") is not None:
        DataContext._set_current(config["data_context"])
    return data.iterator()


def micro_batches(shard, size: int, skip: int, replay_bytes: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches over as many epochs as needed, skipping the first `skip` (already trained on).

    With `replay_bytes`, the first epoch is kept while it fits in that many bytes and replayed for the
    epochs after it: only for a stream that is the worker's whole dataset, in the same order every epoch
    (`data.replay_mb`). The demo's cpt ran its pipeline (read, shuffle, tokenise, pack) eight times for eight
    epochs of the same rows."""
    seen, kept, size_kept = 0, [] if replay_bytes > 0 else None, 0
    first = True
    while True:
        empty = True
        epoch = kept if kept is not None and not first else shard.iter_batches(batch_size=size, batch_format="numpy")
        for batch in epoch:
            empty = False
            if first and kept is not None:
                size_kept += sum(column.nbytes for column in batch.values())
                if size_kept <= replay_bytes:
                    kept.append(batch)
                else:
                    kept = None  # too large: every epoch streams
            seen += 1
            if seen > skip:
                yield batch
        if empty:
            raise ValueError("the stage's dataset is empty")
        first = False


class Prefetch:
    """Pulls the first micro-batch in a thread, so the data pipeline starts while the model loads."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]]) -> None:
        import threading

        self.batches, self.first, self.error = batches, None, None
        self.thread = threading.Thread(target=self._pull, daemon=True)
        self.thread.start()

    def _pull(self) -> None:
        try:
            self.first = next(self.batches)
        except BaseException as err:  # re-raised in the training thread
            self.error = err

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.thread.join()
        if self.error is not None:
            raise self.error
        yield self.first
        yield from self.batches

    def close(self) -> None:
        """End the stream (its Ray Data execution stops with it), drawn from or not."""
        self.thread.join()
        self.batches.close()


def share(rows: dict[str, np.ndarray], size: int, rank: int, world: int) -> Iterator[dict[str, np.ndarray]]:
    """Micro-batches of `size` over this rank's share of `rows` (every world-th row from its rank on)."""
    mine = np.arange(rank, len(next(iter(rows.values()))), world)
    for start in range(0, len(mine), size):
        picked = mine[start:start + size]
        yield {name: column[picked] for name, column in rows.items()}
