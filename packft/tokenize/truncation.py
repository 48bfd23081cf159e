"""Cutting samples that exceed the token budget: MindSpeed's rule, and packft's marker-keeping one.

**MindSpeed's rule** (``Template._make_pairs``, LLaMA-Factory 0.8.2; :func:`truncate_turns`):
with budget ``L`` and, turn by turn, ``L'`` = what is left, a turn of ``s`` prompt and ``t``
answer tokens keeps ``max_t = max(int(L' * t / (s + t)), 1)`` answer and ``max_s = L' - min(max_t,
t)`` prompt tokens, each a prefix; turns after the budget is spent are dropped. A turn's prompt is
its template's opening (``<s>[INST] ``), the user text and the closing marker (`` [/INST]``,
``<|im_end|>\\n<|im_start|>assistant\\n``) in one piece, so cutting its tail cuts the closing
marker first: the model is then trained on an answer to an unterminated prompt. packft keeps
this rule where output must stay byte-identical to MindSpeed (``--overlong drop``) and only
counts such samples (``truncated_marker_lost``, :func:`prompt_marker_lost`).

**Marker-keeping rule** (``--overlong truncate``; :func:`cut_keeping_markers`): the tokens of each
message are split into *text* tokens (those overlapping the characters of the message's own text:
user/assistant/observation content, a function call's name and arguments, as located by
:meth:`packft.tokenize.templates.Template.render_with_spans` and the tokenizer's offsets) and
*marker* tokens (everything else: bos/eos, role headers, ``[INST]``/``[/INST]``, the system prompt).
Turn by turn, a turn that fits is kept whole; otherwise its markers are kept and MindSpeed's
proportional rule shares ``L' - markers`` between the prompt text and the answer text, each cut to
a prefix. A later turn whose markers alone do not fit is dropped with the rest. Only when the
*first* turn's markers do not fit (a system prompt longer than the budget) is MindSpeed's cut
used instead, and counted in ``truncated_marker_lost``. A token straddling text and marker
characters counts as text (BPE merges such as ``".\\n"``).

Worked example (``llama2``, budget 14, one turn ``user "a b c d e f g h"``, ``assistant "ok"``)::

    <s> ▁[ INST ] ▁a ▁b ▁c ▁d ▁e ▁f ▁g ▁h ▁[ / INST ]  |  ▁ok </s>      16 + 2 tokens
    markers: <s> ▁[ INST ] ▁[ / INST ] </s> = 9, text budget 14 - 9 = 5, text (8, 1):
    max_t = max(int(5 * 1/9), 1) = 1, max_s = 5 - 1 = 4
    -> <s> ▁[ INST ] ▁a ▁b ▁c ▁d ▁[ / INST ] | ▁ok </s>
    MindSpeed: max_t = max(int(14 * 2/18), 1) = 1, max_s = 13
    -> <s> ▁[ INST ] ▁a ▁b ▁c ▁d ▁e ▁f ▁g ▁h ▁[ | ▁ok        (marker lost: counted)

Cost: only samples over the budget are looked at again (rendered with spans and encoded once more
with offsets, in one call per batch).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from packft.ingest.records import Conversation


def infer_max_len(
    source_len: int, target_len: int, max_len: int, reserved: int = 1
) -> tuple[int, int]:
    """(max source, max target) tokens of one turn under budget ``max_len``, split by share."""
    total = source_len + target_len
    max_target = int(max_len * (target_len / total)) if total else 0
    max_target = max(max_target, reserved)
    return max_len - min(max_target, target_len), max_target


def infer_seqlen(source_len: int, target_len: int, cutoff: int) -> tuple[int, int]:
    """(source, target) kept of one pair cut alone to ``cutoff`` (LLaMA-Factory's rule).

    A side shorter than half the cutoff is kept whole and the other side gets the rest; when
    both are long the target gets its share of the cutoff. Pairs that fit are unchanged.
    """
    if 2 * target_len < cutoff:
        max_target = cutoff
    elif 2 * source_len < cutoff:
        max_target = cutoff - source_len
    else:
        max_target = int(cutoff * (target_len / (source_len + target_len)))
    target = min(max_target, target_len)
    return min(max(cutoff - target, 0), source_len), target


def truncate_turns(turn_lengths: list[tuple[int, int]], cutoff: int) -> list[tuple[int, int]]:
    """Kept (source, target) lengths per turn; (0, 0) for turns dropped after the budget."""
    kept, total = [], 0
    for src, tgt in turn_lengths:
        if total >= cutoff:
            kept.append((0, 0))
            continue
        max_s, max_t = infer_max_len(src, tgt, cutoff - total)
        s, t = min(src, max_s), min(tgt, max_t)
        total += s + t
        kept.append((s, t))
    return kept


# --- which tokens are the message's text --------------------------------------------------------


def _text_mask(offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """True for tokens whose characters overlap a span (zero-width tokens: their position)."""
    if not offsets:
        return np.zeros(0, bool)
    off = np.asarray(offsets, np.int64).reshape(-1, 2)
    start, end = off[:, 0], np.maximum(off[:, 1], off[:, 0] + 1)
    mask = np.zeros(len(off), bool)
    for a, b in spans:
        mask |= (start < b) & (end > a)
    return mask


def _piece_flags(
    piece: str, found: Sequence[tuple[int, int]], known: Mapping[str, int]
) -> np.ndarray | None:
    """Flags that need no offsets: no text (all markers) or text only; None otherwise."""
    if piece not in known:
        return None
    if not found:
        return np.zeros(known[piece], bool)
    if len(found) == 1 and found[0] == (0, len(piece)):
        return np.ones(known[piece], bool)
    return None


def text_flags(
    convs: Sequence[Conversation],
    template: Any,
    tokenizer: Any,
    known: Mapping[str, int] | None = None,
) -> list[list[np.ndarray]]:
    """Per conversation, per message (turn 0 source, turn 0 target, ...): True on text tokens.

    Pieces that mix text and markers are encoded again, with offsets, in one backend call (the
    same strings through the same tokenizer give the batch encoder's ids); pieces that are all
    text or all markers only need their token count, from ``known`` (string -> tokens) when
    given. A template that does not locate the text (``hf``) gives all-False flags: every
    token is a marker.
    """
    known = known or {}
    rendered = [template.render_with_spans(conv, tokenizer) for conv in convs]
    plans = []  # per conversation, per message: [(piece, spans or None)]
    mixed: set[str] = set()
    for turns, spans in rendered:
        messages = [side for t in turns for side in (t.source, t.target)]
        plan = []
        for m, pieces in enumerate(messages):
            row = []
            for p, piece in enumerate(pieces):
                found = spans[m][p] if spans is not None and isinstance(piece, str) else ()
                flags = np.zeros(1, bool) if isinstance(piece, int) else None
                flags = flags if flags is not None else _piece_flags(piece, found, known)
                if flags is None:
                    mixed.add(piece)
                row.append((piece, found, flags))
            plan.append(row)
        plans.append(plan)
    strings = sorted(mixed)
    encodings = tokenizer._tokenizer.encode_batch(strings, add_special_tokens=False)
    offsets = {s: e.offsets for s, e in zip(strings, encodings, strict=True)}
    out = []
    for plan in plans:
        flags_per_message = []
        for row in plan:
            parts = [f if f is not None else _text_mask(offsets[p], found) for p, found, f in row]
            flags_per_message.append(np.concatenate(parts) if parts else np.zeros(0, bool))
        out.append(flags_per_message)
    return out


# --- the two rules on top of the flags ----------------------------------------------------------


def prompt_marker_lost(flags: Sequence[np.ndarray], kept: Sequence[int]) -> bool:
    """Whether a prefix cut (``kept`` tokens of each message) removed a marker token from the
    prompt of a turn that is still (partly) there."""
    for i in range(0, len(flags), 2):
        src_kept, tgt_kept = kept[i], kept[i + 1]
        if src_kept + tgt_kept and not flags[i][src_kept:].all():
            return True
    return False


def _keep_text_prefix(flags: np.ndarray, n_text: int) -> np.ndarray:
    return ~flags | (np.cumsum(flags) <= n_text)


def cut_keeping_markers(flags: Sequence[np.ndarray], cutoff: int) -> list[np.ndarray] | None:
    """Per message, which tokens stay (see the module docstring); None when the first turn's
    markers alone exceed ``cutoff`` (the caller then falls back to MindSpeed's cut)."""
    masks: list[np.ndarray] = []
    total = 0
    for i in range(0, len(flags), 2):
        src, tgt = flags[i], flags[i + 1]
        room = cutoff - total
        if len(src) + len(tgt) <= room:
            masks += [np.ones(len(src), bool), np.ones(len(tgt), bool)]
            total += len(src) + len(tgt)
            continue
        text_s, text_t = int(src.sum()), int(tgt.sum())
        budget = room - (len(src) - text_s) - (len(tgt) - text_t)
        if budget < 1:
            if i == 0:
                return None
            masks += [np.zeros(len(f), bool) for f in flags[i:]]
            break
        max_s, max_t = infer_max_len(text_s, text_t, budget)
        keep_s, keep_t = min(text_s, max_s), min(text_t, max_t)
        masks += [_keep_text_prefix(src, keep_s), _keep_text_prefix(tgt, keep_t)]
        total += len(src) + len(tgt) - (text_s - keep_s) - (text_t - keep_t)
    return masks


# --- batch helpers for packft.tokenize.batch.encode_conversations -------------------------------


def flags_over_budget(
    convs: list[Conversation],
    template: Any,
    tokenizer: Any,
    skip: bool,
    token_counts: Callable[[], Mapping[str, int]],
) -> list[list[np.ndarray]]:
    """Text/marker flags of the samples over the budget (none when they are dropped anyway);
    ``token_counts`` gives the batch's tokens per string (built only when needed)."""
    if skip or not convs:
        return [[] for _ in convs]
    return text_flags(convs, template, tokenizer, token_counts())


def check_flags(flags: list[np.ndarray], lengths: np.ndarray, conv: Conversation) -> None:
    """The flags must cover exactly the tokens the batch encoder produced, message by message.

    Raises:
        RuntimeError: they do not (a tokenizer whose offsets encode differs; never seen).
    """
    if [len(f) for f in flags] != lengths.tolist():  # the same strings, the same tokenizer
        raise RuntimeError(
            f"{conv.source} row {conv.row}: re-encoding with offsets gave other token counts "
            f"({[len(f) for f in flags]} vs {lengths.tolist()}); please report this"
        )


def count_marker_lost(
    convs: list[Conversation],
    template: Any,
    tokenizer: Any,
    cut: np.ndarray,
    known: dict[int, list[np.ndarray]],
    masks: dict[int, np.ndarray],
    msg_first: np.ndarray,
    turns_per_sample: list[int],
    keep_msg: np.ndarray,
    token_counts: Callable[[], Mapping[str, int]],
) -> int:
    """Samples whose prefix cut (MindSpeed's, or its per-pair neat-pack cut) removed a marker
    from a kept turn's prompt; marker-keeping cuts never do."""
    todo = [s for s in np.flatnonzero(cut).tolist() if int(msg_first[s]) not in masks]
    missing = [s for s in todo if s not in known]
    if missing:
        found = text_flags([convs[s] for s in missing], template, tokenizer, token_counts())
        known = {**known, **dict(zip(missing, found, strict=True))}
    lost = 0
    for s in todo:
        first, k = int(msg_first[s]), 2 * turns_per_sample[s]
        lost += prompt_marker_lost(known[s], keep_msg[first : first + k].tolist())
    return lost
