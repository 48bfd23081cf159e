"""Opt-in repairs of ShareGPT/OpenAI conversations that MindSpeed's rules reject (``--repair``).

Why: the most used ShareGPT file, ShareGPT_V3_unfiltered_cleaned_split, cuts long chats into
chunks; of its first 3,000 records 40% are rejected (the project owner's count), 1,142 as
``roles_not_alternating``, almost all chunks that start with a ``gpt`` turn. The rejections are
right by MindSpeed's rules and stay the default; these repairs recover such records on request. Each repair works on the canonical turns (after role-tag mapping
and removal of a leading system message), in this fixed order, whatever order was asked for:

1. ``merge-consecutive``: every run of adjacent turns with the same role (user, assistant or
   observation) becomes one turn whose text is the run's non-blank texts joined with
   :data:`MERGE_SEPARATOR` (``"\\n\\n"``, a paragraph break); function-call turns are never merged
   (each holds one call's JSON). A run whose texts are all blank stays blank and is rejected as
   usual (``empty_prompt``/``empty_answer``).
2. ``leading-assistant``: a first turn on the answer side (assistant or function call) is dropped,
   as FastChat's ``preprocess`` does (one turn; with ``merge-consecutive`` a leading run is one).
3. ``trailing-user``: a last turn on the prompt side (user or observation) is dropped.

Emptiness checks run after the repairs, so a blank turn that a repair dropped does not reject
the record; a repaired record that is still invalid is rejected with the usual reason. A record
counts once per kind that changed it, and only when it is kept (``repaired`` in the stats).
Alpaca rows are built alternating, so there is nothing to repair there.

Example (``leading-assistant,trailing-user``)::

    gpt "...end of the previous chunk", human "q", gpt "a", human "next question"
    -> human "q", gpt "a"                  repaired: leading_assistant=1, trailing_user=1
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace

from packft.ingest.records import ANSWER_ROLES, PROMPT_ROLES

REPAIRS: tuple[str, ...] = ("merge-consecutive", "leading-assistant", "trailing-user")
"""The ``--repair`` kinds, in the order they are applied."""
MERGE_SEPARATOR = "\n\n"
"""What ``merge-consecutive`` puts between the texts it joins."""
_MERGEABLE = frozenset({"user", "assistant", "observation"})


def parse_repairs(value: str | Iterable[str] | None) -> list[str]:
    """``"a,b"`` or ``["a", "b,c"]`` -> the kinds in application order (``_`` = ``-``).

    Raises:
        ValueError: an unknown kind; the message lists the valid ones.
    """
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    asked = set()
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"--repair takes names, got {item!r}; valid: {', '.join(REPAIRS)}")
        asked |= {p.strip().replace("_", "-") for p in item.split(",") if p.strip()}
    unknown = sorted(asked - set(REPAIRS))
    if unknown:
        raise ValueError(
            f"unknown --repair {', '.join(map(repr, unknown))}; valid: {', '.join(REPAIRS)} "
            "(several: --repair leading-assistant,trailing-user)"
        )
    return [kind for kind in REPAIRS if kind in asked]


def stat_name(kind: str) -> str:
    """The stats key of a repair kind (``leading-assistant`` -> ``leading_assistant``)."""
    return kind.replace("-", "_")


@dataclass(frozen=True, slots=True)
class RawTurn:
    """A turn before the emptiness and alternation checks: role, text, tag and list index."""

    role: str
    content: str
    tag: str
    index: int


def _merge(turns: list[RawTurn]) -> list[RawTurn]:
    out: list[RawTurn] = []
    for turn in turns:
        last = out[-1] if out else None
        if last is None or last.role != turn.role or turn.role not in _MERGEABLE:
            out.append(turn)
            continue
        texts = [t for t in (last.content, turn.content) if t.strip()]
        out[-1] = replace(last, content=MERGE_SEPARATOR.join(texts))
    return out


def apply_repairs(turns: list[RawTurn], kinds: Iterable[str]) -> tuple[list[RawTurn], list[str]]:
    """The repaired turns and the stats names of the repairs that changed something."""
    kinds = set(kinds)
    done: list[str] = []
    if "merge-consecutive" in kinds:
        merged = _merge(turns)
        if len(merged) != len(turns):
            done.append(stat_name("merge-consecutive"))
        turns = merged
    if "leading-assistant" in kinds and turns and turns[0].role in ANSWER_ROLES:
        turns = turns[1:]
        done.append(stat_name("leading-assistant"))
    if "trailing-user" in kinds and turns and turns[-1].role in PROMPT_ROLES:
        turns = turns[:-1]
        done.append(stat_name("trailing-user"))
    return turns, done
