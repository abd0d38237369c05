"""PedCorpus: the embedded knowledge base and the generator that turns it into training data."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=1)
def corpus_version() -> str:
    """A digest of the generator and the knowledge base: a cached corpus, and the default model whose
    tokenizer was trained on it, are built again when either changes."""
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*here.glob("*.py"), *(here / "knowledge").glob("*.yaml")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:10]
