"""Token-exact chunking for chunked registrations (`qwen_register(…, chunk_tokens => N, chunk_overlap => M)`).

A text is tokenised once with the model's own tokenizer (no special tokens, with character offsets).
A text of at most N tokens is one chunk. Otherwise windows of at most N tokens are cut: each window ends at
the best boundary in its second half — after a paragraph break, else after a sentence end (`.`, `!`, `?`,
`;` followed by white space, or `。！？；`), else after white space, else at N tokens — and never inside a
character (a CJK character may be two byte-level tokens). The next window starts M tokens before the end of
the previous one (moved back to a character start), so consecutive chunks share at least M tokens and every
chunk has at most N: no chunk is ever truncated by the model (N + 1 ≤ its max_length, the end-of-text token
included). A chunk is a character span of the text, `text[start:end]`, whose tokens are exactly
`tokens[first:last]` of the whole text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

SENTENCE_END = re.compile(r"[.!?;:][\"'\u201d\u2019)\]]*$")
CJK_SENTENCE_END = re.compile(r"[\u3002\uff01\uff1f\uff1b\u2026][\u201d\u2019\u300d\u300f\uff09]*$")
PARAGRAPH, SENTENCE, SPACE = 3, 2, 1

@dataclass(frozen=True)
class Chunk:
    number: int
    start: int  # character offsets in the text: text[start:end]
    end: int
    first_token: int  # token indexes in the whole text's tokenisation: tokens[first_token:last_token]
    last_token: int

    @property
    def tokens(self) -> int:
        return self.last_token - self.first_token


def token_spans(tokenizer: Any, text: str) -> list[tuple[int, int]]:
    """(start, end) character offsets of each token of `text` (no special tokens)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False)
    return [(int(a), int(b)) for a, b in encoded["offset_mapping"]]


def _starts_character(spans: Sequence[tuple[int, int]], i: int) -> bool:
    """Token i begins a new character (not the second byte-level piece of the previous token's character)."""
    return i == 0 or i >= len(spans) or spans[i][0] >= spans[i - 1][1]


def _strength(text: str, position: int) -> int:
    """How good a place to cut `text` at `position` is: PARAGRAPH, SENTENCE, SPACE or 0. Byte-level tokens
    carry their leading space, so the white space around the cut is looked at on both sides."""
    before = text[max(0, position - 16):position]  # enough to see the punctuation and line breaks
    after = text[position:position + 16]
    stripped = before.rstrip()
    space = before[len(stripped):] + after[:len(after) - len(after.lstrip())]
    if CJK_SENTENCE_END.search(stripped) and not space:
        return SENTENCE
    if not space:
        return 0
    if space.count("\n") >= 2:
        return PARAGRAPH
    if SENTENCE_END.search(stripped) or CJK_SENTENCE_END.search(stripped):
        return SENTENCE
    return SPACE


def _boundary(text: str, spans: Sequence[tuple[int, int]], start: int, limit: int) -> int:
    """The end (exclusive token index) of the window starting at token `start`, at most `limit`: the
    strongest cut in the window's second half, the latest of equally strong ones."""
    if limit >= len(spans):
        return len(spans)
    lowest = start + max(1, (limit - start) // 2)
    best, best_strength = None, 0
    for end in range(limit, lowest - 1, -1):
        if not _starts_character(spans, end):
            continue
        strength = _strength(text, spans[end][0])
        if strength > best_strength:
            best, best_strength = end, strength
            if strength == PARAGRAPH:
                break
    if best is not None:
        return best
    end = limit
    while end > start + 1 and not _starts_character(spans, end):
        end -= 1
    return end


def chunk_text(tokenizer: Any, text: str, chunk_tokens: int, chunk_overlap: int = 0) -> list[Chunk]:
    """The chunks of `text`; none for an empty text."""
    if chunk_tokens < 1 or not 0 <= chunk_overlap <= chunk_tokens // 2:
        raise ValueError(f"need chunk_tokens >= 1 and 0 <= chunk_overlap <= chunk_tokens / 2, "
                         f"got {chunk_tokens}, {chunk_overlap}")
    if not text:
        return []
    spans = token_spans(tokenizer, text)
    if len(spans) <= chunk_tokens:
        return [Chunk(0, 0, len(text), 0, len(spans))]
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = _boundary(text, spans, start, start + chunk_tokens)
        chunks.append(Chunk(len(chunks), spans[start][0], spans[end - 1][1], start, end))
        if end >= len(spans):
            return chunks
        following = max(end - chunk_overlap, start + 1)
        while following > start + 1 and not _starts_character(spans, following):
            following -= 1
        start = following


# -- embedding a chunked claim ----------------------------------------------------------------------

_tokenizers: dict[str, Any] = {}


def tokenizer_for(backend: Any) -> Any:
    """The backend's own tokenizer (the transformers and sentence-transformers backends hold one), else the
    model's tokenizer files."""
    own = getattr(backend, "tokenizer", None) or getattr(getattr(backend, "st", None), "tokenizer", None)
    if own is not None:
        return own
    name = backend.info.name
    if name not in _tokenizers:
        from transformers import AutoTokenizer

        _tokenizers[name] = AutoTokenizer.from_pretrained(name)
    return _tokenizers[name]


def embed_chunked(backend: Any, claim: Any, indexes: Sequence[int], result: Any) -> None:
    """Cut the texts of `indexes` into chunks, embed every chunk (document form), and give each row its
    chunks with their vectors and, as its own vector, the normalised mean of them. A row whose chunks
    fail is isolated by bisection, as unchunked rows are; the others land."""
    import numpy as np

    max_length = getattr(backend.info, "max_length", None)
    if max_length is not None and claim.chunk_tokens + 1 > max_length:
        message = (f"chunk_tokens {claim.chunk_tokens} does not fit the model's max_length {max_length} "
                   f"(one token is the end-of-text token); lower chunk_tokens with qwen_alter")
        result.errors.update(dict.fromkeys(indexes, message))
        return
    tokenizer = tokenizer_for(backend)
    cut: dict[int, list[Chunk]] = {}
    for i in indexes:
        try:
            cut[i] = chunk_text(tokenizer, claim.texts[i], claim.chunk_tokens, claim.chunk_overlap)
        except Exception as exc:  # a text the tokenizer refuses is that row's error
            result.errors[i] = f"chunking failed: {type(exc).__name__}: {exc}"

    def embed_rows(rows: Sequence[int]) -> None:
        if not rows:
            return
        texts = [claim.texts[i][c.start:c.end] for i in rows for c in cut[i]]
        try:
            out = backend.embed(texts, dimensions=claim.dimensions)
            vectors = np.asarray(out.vectors, dtype=np.float32)
            if vectors.shape != (len(texts), claim.dimensions) or not np.isfinite(vectors).all():
                raise ValueError(f"the model returned unusable vectors of shape {vectors.shape}")
        except Exception as exc:
            if len(rows) == 1:
                result.errors[rows[0]] = f"{type(exc).__name__}: {exc}"
                return
            half = len(rows) // 2
            embed_rows(rows[:half])
            embed_rows(rows[half:])
            return
        result.truncated += int(out.truncated)
        at = 0
        for i in rows:
            own = vectors[at:at + len(cut[i])]
            at += len(cut[i])
            result.chunks[i] = list(zip(cut[i], own, strict=True))
            mean = own.mean(axis=0)
            result.vectors[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)

    embed_rows([i for i in indexes if i in cut])
