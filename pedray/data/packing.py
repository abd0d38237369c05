"""Packs tokenised documents into fixed-length rows without cross-document attention."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pedray.data.columns import IGNORE_INDEX

Doc = tuple[np.ndarray, np.ndarray]


def split_long(docs: Sequence[Doc], seq_len: int, truncate: bool) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Documents longer than a row are truncated (sft) or cut into row-sized chunks (cpt).

    Each piece keeps the index of the document it came from (for its task tag).
    """
    out = []
    for doc, (ids, labels) in enumerate(docs):
        if len(ids) <= seq_len:
            out.append((ids, labels, doc))
        elif truncate:
            out.append((ids[:seq_len], labels[:seq_len], doc))
        else:
            out.extend((ids[i:i + seq_len], labels[i:i + seq_len], doc) for i in range(0, len(ids), seq_len))
    return [piece for piece in out if len(piece[0]) > 1]


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of document indices, longest documents first, each into the first bin it fits."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for index in order:
        length = lengths[index]
        for b, free in enumerate(room):
            if free >= length:
                bins[b].append(index)
                room[b] -= length
                break
        else:
            bins.append([index])
            room.append(capacity - length)
    return bins


def pack(docs: Sequence[Doc], seq_len: int, pad_id: int, truncate: bool = True,
         seed: int | None = None, tags: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """Pack documents into rows of `seq_len` tokens.

    Each row holds whole documents; `position_ids` restart at 0 for every document, which
    transformers turns into a block-diagonal causal mask (SDPA, flash attention). The first label
    of each document is masked so no token learns to predict across a boundary. The tail of a row
    is padding: pad ids, labels -100, its own position run (a separate, ignored segment).

    First-fit decreasing fills rows longest documents first; with `seed` the rows come out in a
    seeded random order instead, so consecutive micro-batches are not sorted by document length.

    Returns:
        input_ids, labels, position_ids: int32 arrays of shape [rows, seq_len];
        tokens: int32 [rows], the real (non-padding) tokens of each row;
        task_ids: int8 [rows, seq_len] when `tags` (one per document) is given, -1 on padding.
    """
    pieces = split_long(docs, seq_len, truncate)
    bins = first_fit_decreasing([len(piece[0]) for piece in pieces], seq_len)
    if seed is not None:
        bins = [bins[i] for i in np.random.default_rng(seed).permutation(len(bins))]
    shape = (len(bins), seq_len)
    input_ids = np.full(shape, pad_id, dtype=np.int32)
    labels = np.full(shape, IGNORE_INDEX, dtype=np.int32)
    positions = np.zeros(shape, dtype=np.int32)
    tokens = np.zeros(len(bins), dtype=np.int32)
    task_ids = np.full(shape, -1, dtype=np.int8)
    for row, members in enumerate(bins):
        cursor = 0
        for index in members:
            ids, labs, doc = pieces[index]
            n = len(ids)
            input_ids[row, cursor:cursor + n] = ids
            labels[row, cursor:cursor + n] = labs
            labels[row, cursor] = IGNORE_INDEX
            positions[row, cursor:cursor + n] = np.arange(n)
            if tags is not None:
                task_ids[row, cursor:cursor + n] = tags[doc]
            cursor += n
        positions[row, cursor:] = np.arange(seq_len - cursor)
        tokens[row] = cursor
    rows = {"input_ids": input_ids, "labels": labels, "position_ids": positions, "tokens": tokens}
    if tags is not None:
        rows["task_ids"] = task_ids
    return rows


def pad_rows(docs: Sequence[Doc], seq_len: int, pad_id: int,
             tags: Sequence[int] | None = None) -> dict[str, np.ndarray]:
    """One document a row, right-padded (the no-packing path, for models without packed attention)."""
    pieces = split_long(docs, seq_len, truncate=True)
    width = seq_len
    input_ids = np.full((len(pieces), width), pad_id, dtype=np.int32)
    labels = np.full((len(pieces), width), IGNORE_INDEX, dtype=np.int32)
    positions = np.tile(np.arange(width, dtype=np.int32), (len(pieces), 1))
    task_ids = np.full((len(pieces), width), -1, dtype=np.int8)
    for row, (ids, labs, doc) in enumerate(pieces):
        input_ids[row, :len(ids)] = ids
        labels[row, :len(ids)] = labs
        labels[row, 0] = IGNORE_INDEX
        if tags is not None:
            task_ids[row, :len(ids)] = tags[doc]
    tokens = np.asarray([len(ids) for ids, _, _ in pieces], dtype=np.int32)
    rows = {"input_ids": input_ids, "labels": labels, "position_ids": positions, "tokens": tokens}
    if tags is not None:
        rows["task_ids"] = task_ids
    return rows


def non_padding_fraction(rows: dict[str, np.ndarray]) -> float:
    """Share of real (non-padding) tokens in packed rows."""
    total = rows["input_ids"].size
    return float(rows["tokens"].sum()) / total if total else 0.0
