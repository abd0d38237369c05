"""Text normalisation and duplicate removal for ingested corpora."""

from __future__ import annotations

import hashlib
import re
import unicodedata

from datasketch import MinHash, MinHashLSH

_CJK = r"[\u3400-\u4dbf\u4e00-\u9fff]"
# Half-width punctuation written between Chinese characters becomes its full-width form.
_TO_FULL = {",": "，", "?": "？", "!": "！", ":": "：", ";": "；", "(": "（", ")": "）"}
_HALF_BETWEEN_CJK = re.compile(rf"(?<={_CJK})([,?!:;])|([,?!:;])(?={_CJK})")


def _fold_width(char: str) -> str:
    """Full-width ASCII letters, digits and the ideographic space (U+3000) become half-width."""
    code = ord(char)
    if char == "\u3000":
        return " "
    if 0xFF10 <= code <= 0xFF19 or 0xFF21 <= code <= 0xFF3A or 0xFF41 <= code <= 0xFF5A:
        return chr(code - 0xFEE0)
    return char


def normalize_text(text: str) -> str:
    """Canonical form of a piece of Chinese medical text.

    Letters and digits are half-width, Chinese punctuation is full-width, ideographic and repeated
    spaces collapse, stray leading/trailing newlines go, and runs of blank lines become one.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = "".join(_fold_width(c) for c in text)
    text = _HALF_BETWEEN_CJK.sub(lambda m: _TO_FULL[m.group(1) or m.group(2)], text)
    text = re.sub(r"[ \t\u00a0]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def record_key(record: dict) -> str:
    """The text that identifies a record for deduplication."""
    parts = [record.get("system", ""), record.get("text", "")]
    parts += [m["content"] for m in record.get("messages", [])]
    parts += [record.get("chosen", ""), record.get("rejected", "")]
    return "\u241f".join(parts)


def _shingles(text: str, width: int = 5) -> set[bytes]:
    compact = re.sub(r"\s+", "", text)
    if len(compact) <= width:
        return {compact.encode()}
    return {compact[i:i + width].encode() for i in range(len(compact) - width + 1)}


class Deduplicator:
    """Drops exact duplicates (SHA-256 of the key) and near duplicates (MinHash LSH over 5-gram shingles).

    Args:
        threshold: estimated Jaccard similarity at or above which a record is a near duplicate.
        num_perm: MinHash permutations (more is more precise and slower).
    """

    def __init__(self, threshold: float = 0.9, num_perm: int = 64) -> None:
        self.seen: set[str] = set()
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if threshold < 1.0 else None
        self.num_perm = num_perm

    def check(self, record: dict) -> str | None:
        """None for a new record (and remember it), else "exact duplicate" or "near duplicate"."""
        key = record_key(record)
        digest = hashlib.sha256(key.encode()).hexdigest()
        if digest in self.seen:
            return "exact duplicate"
        if self.lsh is not None:
            signature = MinHash(num_perm=self.num_perm, seed=1)
            signature.update_batch(list(_shingles(key)))
            if self.lsh.query(signature):
                return "near duplicate"
            self.lsh.insert(digest, signature)
        self.seen.add(digest)
        return None
