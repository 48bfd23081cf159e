"""Alpaca, ShareGPT and OpenAI ``messages`` rows -> one canonical :class:`Conversation` or a reason.

Field names follow MindSpeed-LLM's ``InstructionDatasetAttr`` and ``--map-keys`` JSON:

* **alpaca** ``{"prompt": "instruction", "query": "input", "response": "output",
  "system": "system", "history": "history"}``. User turn = ``prompt + "\\n" + query`` (just the
  non-empty one when the other is empty); ``history`` ``[[q, a], ...]`` become earlier turns.
* **sharegpt** ``{"messages": "conversations", "system": "system", "tools": "tools"}`` and
  ``"tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag":
  "gpt", "observation_tag": "observation", "function_tag": "function_call", "system_tag":
  "system"}``. Tag keys are also accepted at the top level of ``--map-keys``; tags not given keep
  their defaults (MindSpeed resets them to None, which breaks every sample).
* **openai** ``{"messages": "messages", "system": "system", "tools": "tools"}``, tags role/content,
  roles system/user/assistant, ``tool`` and legacy ``function`` results -> observation,
  ``function_call`` -> function. An assistant message carrying ``tool_calls`` (or a legacy
  ``function_call``) and no text becomes a function turn whose content is the call JSON
  ``{"name", "arguments"}`` (a list for parallel calls), the form templates format as a call.
  A per-message ``weight`` is ignored: every assistant turn is trained, as in MindSpeed.

A leading system message becomes the system prompt (it wins over a ``system`` column); ``tools``
given as a list/dict is stored as JSON text. A ``--map-keys`` value of ``null`` turns a field off.
Deviations from MindSpeed, each to avoid losing or mis-training data silently: ``system``,
``tools`` and ``history`` columns are read when present (MindSpeed only when mapped: pass
``{"system": null}`` etc. to reproduce it); empty answers and empty user turns are rejected;
OpenAI rows must alternate like ShareGPT rows; rejects are reported, not just logged. Records
MindSpeed rejects can be repaired on request (``repair``, :mod:`packft.ingest.repairs`): a leading
answer turn or a trailing prompt turn dropped, same-role neighbours merged; role tags may be lists
(``{"assistant_tag": ["gpt", "bing"]}``). Details name a message by its 0-based index in the
record (``conversations[2]``); the rejects message adds the 1-based record number. Like
MindSpeed's ``check_dataset_info_map``, a required or explicitly mapped column that no row of the
first batch has is a ``ValueError`` (wrong handler or a typo), not thousands of rejects.
``--map-keys`` itself is checked and overlaid on the defaults by :mod:`packft.ingest.keymap`.

Reason codes (stable, used in the rejects file and the summary):

======================== ====================================================================
not_a_dict               the row is not a JSON object (e.g. a bare string or list)
invalid_json             the line could not be parsed as JSON (JSON-lines readers)
missing_field            a required field is absent or null (instruction, output, messages, ...)
wrong_type               a field has the wrong type (number for text, dict for a message list)
invalid_text             text is not valid UTF-8 (undecodable bytes, lone surrogates)
bad_history              alpaca ``history`` is not a list of [question, answer] string pairs
empty_conversation       no turns (after removing a leading system message)
empty_prompt             a user turn is empty or whitespace
empty_answer             an assistant/function turn is empty or whitespace
unknown_role             a role tag outside the mapping (the detail lists the accepted tags)
misplaced_system         a system message that is not the first message
roles_not_alternating    a prompt-side role where an answer is due, or the reverse
wrong_last_role          the conversation ends on the prompt side (user/observation)
unsupported_message      OpenAI content parts that are not text, or text plus tool calls
too_large                the record is over ``--max-record-bytes`` (never decoded whole)
too_deep                 arrays/objects nest deeper than ``packft.ingest.limits.MAX_DEPTH`` (100)
======================== ====================================================================

Cost (measured, one process): ~8 us per Alpaca row and ~30 us per 5-turn ShareGPT row on top of
reading, i.e. 60k-130k Alpaca rows/s end to end; tokenization dominates the pipeline.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from packft.ingest.keymap import (
    FORMATS,
    HANDLER_FORMATS,
    KeyMap,
    get_key_map,
    normalize_format,
    resolve_map_keys,
)
from packft.ingest.limits import RecordLimits
from packft.ingest.readers import iter_record_batches
from packft.ingest.records import ANSWER_ROLES, PROMPT_ROLES, Conversation, Message
from packft.ingest.rejects import (
    InvalidRecord,
    InvalidRecordError,
    RejectLog,
    ValidationSummary,
    format_reject,
)
from packft.ingest.repairs import RawTurn, apply_repairs, parse_repairs
from packft.ingest.stream import BadRow, RecordBatch

__all__ = [
    "FORMATS",
    "HANDLER_FORMATS",
    "InvalidRecord",
    "InvalidRecordError",
    "KeyMap",
    "RejectLog",
    "ValidationSummary",
    "format_reject",
    "iter_conversations",
    "normalize_format",
    "resolve_map_keys",
    "to_conversation",
    "validate_file",
]

# ---------------------------------------------------------------------------- field checks


def _text(value: Any, name: str, *, required: bool) -> str:
    """A UTF-8-clean string, ``""`` for an absent optional field, else :class:`InvalidRecord`."""
    if value is None:
        if required:
            raise InvalidRecord("missing_field", f"{name!r} is missing or null")
        return ""
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRecord("invalid_text", f"{name!r}: {exc}") from None
    if not isinstance(value, str):
        raise InvalidRecord(
            "wrong_type", f"{name!r} must be a string, got {type(value).__name__}: {value!r:.80}"
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRecord(
            "invalid_text", f"{name!r} has undecodable text at character {exc.start}"
        ) from None
    return value


def _get(row: Mapping[str, Any], key: str | None) -> Any:
    return row.get(key) if key is not None else None


def _maybe_json(value: Any, name: str, kinds: tuple[type, ...]) -> Any:
    """Lists stored as JSON text (CSV, some parquet exports) are decoded; anything else as is."""
    if isinstance(value, str) and value.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except RecursionError:
            raise InvalidRecord("too_deep", f"{name!r} is JSON text nested too deep") from None
        except ValueError:
            raise InvalidRecord("wrong_type", f"{name!r} is text that is not valid JSON") from None
    if value is not None and not isinstance(value, kinds):
        raise InvalidRecord("wrong_type", f"{name!r} must be a list, got {type(value).__name__}")
    return value


def _tools(row: Mapping[str, Any], key: str | None) -> str:
    value = _get(row, key)
    if isinstance(value, list | dict):
        return json.dumps(value, ensure_ascii=False)
    return _text(value, key or "tools", required=False)


def _check_row(row: Any) -> Mapping[str, Any]:
    if isinstance(row, BadRow):
        raise InvalidRecord(row.reason, row.error)
    if not isinstance(row, Mapping):
        raise InvalidRecord("not_a_dict", f"expected a JSON object, got {type(row).__name__}")
    return row


def _turn(role: str, content: str) -> Message:
    if not content.strip():
        if role in ANSWER_ROLES:
            raise InvalidRecord("empty_answer", f"the {role} turn is empty")
        if role == "user":
            raise InvalidRecord("empty_prompt", "a user turn is empty")
    return Message(role, content)  # type: ignore[arg-type]


def _alternation(turns: list[RawTurn], name: str) -> None:
    for i, turn in enumerate(turns):
        expected = PROMPT_ROLES if i % 2 == 0 else ANSWER_ROLES
        if turn.role not in expected:
            side = "a prompt (user/observation)" if i % 2 == 0 else "an answer (assistant/function)"
            if i == 0:
                hint = " (--repair leading-assistant drops it)"
            elif turn.role == turns[i - 1].role and turn.role != "function":
                hint = " (--repair merge-consecutive joins it to the one before)"
            else:
                hint = ""
            raise InvalidRecord(
                "roles_not_alternating",
                f"{name}[{turn.index}] is {turn.tag!r} but {side} turn is due{hint}",
            )
    if len(turns) % 2:
        raise InvalidRecord(
            "wrong_last_role",
            f"the last turn is {turns[-1].tag!r}; a conversation must end on an answer"
            " (--repair trailing-user drops it)",
        )


# ---------------------------------------------------------------------------- converters


def _alpaca(row: Mapping[str, Any], keys: KeyMap) -> Conversation:
    c = keys.columns
    prompt = _text(
        _get(row, c["prompt"]), c["prompt"] or "prompt", required=c["prompt"] is not None
    )
    query = _text(_get(row, c["query"]), c["query"] or "query", required=False)
    response = _get(row, c["response"])
    if isinstance(response, list):
        raise InvalidRecord("wrong_type", f"{c['response']!r} is a list (ranking data, not SFT)")
    answer = _text(response, c["response"] or "response", required=True)
    messages: list[Message] = []
    history = _maybe_json(_get(row, c["history"]), c["history"] or "history", (list,))
    for i, pair in enumerate(history or []):
        if not isinstance(pair, list | tuple) or len(pair) != 2:
            raise InvalidRecord("bad_history", f"history[{i}] is not a [question, answer] pair")
        try:
            old_q, old_a = (_text(x, f"history[{i}]", required=True) for x in pair)
        except InvalidRecord as exc:
            reason = "invalid_text" if exc.reason == "invalid_text" else "bad_history"
            raise InvalidRecord(reason, exc.detail) from None
        messages += [_turn("user", old_q), _turn("assistant", old_a)]
    user = "\n".join(part for part in (prompt, query) if part)
    messages += [_turn("user", user), _turn("assistant", answer)]
    system = _text(_get(row, c["system"]), c["system"] or "system", required=False)
    return Conversation(messages=messages, system=system)


def _openai_content(
    message: Mapping[str, Any], content_tag: str, name: str, *, calls_allowed: bool
) -> tuple[str | None, str]:
    """(role override, text) for an OpenAI message: tool calls, text parts, or plain content."""
    calls = message.get("tool_calls") or (
        [{"function": message["function_call"]}] if message.get("function_call") else None
    )
    calls = calls if calls_allowed else None
    content = message.get(content_tag)
    if isinstance(content, list):
        if any(not isinstance(p, Mapping) or p.get("type") != "text" for p in content):
            raise InvalidRecord("unsupported_message", "content parts other than text")
        content = "".join(_text(p.get("text"), f"{name}.text", required=True) for p in content)
    if not calls:
        return None, _text(content, name, required=True)
    if isinstance(content, str) and content.strip():
        raise InvalidRecord("unsupported_message", "an assistant message has text and tool_calls")
    parsed = []
    for call in calls:
        function = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(function, Mapping) or not isinstance(function.get("name"), str):
            raise InvalidRecord("wrong_type", "a tool call has no function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            with contextlib.suppress(ValueError):  # unparsable arguments stay text
                arguments = json.loads(arguments) if arguments.strip() else {}
        parsed.append({"name": function["name"], "arguments": arguments})
    return "function", json.dumps(parsed[0] if len(parsed) == 1 else parsed, ensure_ascii=False)


def _chat(row: Mapping[str, Any], keys: KeyMap, repair: tuple[str, ...] = ()) -> Conversation:
    c, t = keys.columns, keys.tags
    name = c["messages"] or "messages"
    raw = _maybe_json(_get(row, c["messages"]), name, (list,))
    if raw is None:
        raise InvalidRecord("missing_field", f"{name!r} is missing or null")
    system_tags = keys.tag_values("system_tag")
    first = 0
    if raw and isinstance(raw[0], Mapping) and raw[0].get(t["role_tag"]) in system_tags:
        system = _text(raw[0].get(t["content_tag"]), f"{name}[0]", required=False)
        first = 1
    else:
        system = _text(_get(row, c["system"]), c["system"] or "system", required=False)
    if len(raw) <= first:
        raise InvalidRecord("empty_conversation", f"{name!r} has no turns")
    roles = keys.roles()
    turns: list[RawTurn] = []
    for i in range(first, len(raw)):
        message = raw[i]
        if not isinstance(message, Mapping):
            raise InvalidRecord(
                "wrong_type", f"{name}[{i}] is {type(message).__name__}, not an object"
            )
        tag = message.get(t["role_tag"])
        if tag in system_tags:
            raise InvalidRecord("misplaced_system", f"{name}[{i}] is a system message")
        role = roles.get(tag) if isinstance(tag, str) else None
        if role is None:
            raise InvalidRecord("unknown_role", keys.unknown_role_detail(f"{name}[{i}]", tag))
        where = f"{name}[{i}].{t['content_tag']}"
        if keys.fmt == "openai":
            override, content = _openai_content(
                message, t["content_tag"], where, calls_allowed=role == "assistant"
            )
            role = override or role
        else:
            content = _text(message.get(t["content_tag"]), where, required=True)
        if not repair:  # today's order of checks: the first bad turn decides the reason
            _turn(role, content)
        turns.append(RawTurn(role, content, tag, i))
    done: list[str] = []
    if repair:
        turns, done = apply_repairs(turns, repair)
        if not turns:
            raise InvalidRecord("empty_conversation", f"{name!r} has no turns left after --repair")
        for turn in turns:
            _turn(turn.role, turn.content)
    _alternation(turns, name)
    messages = [Message(turn.role, turn.content) for turn in turns]  # type: ignore[arg-type]
    conversation = Conversation(messages=messages, system=system, tools=_tools(row, c["tools"]))
    if done:
        conversation.meta["repaired"] = done
    return conversation


def _alpaca_row(row: Mapping[str, Any], keys: KeyMap, repair: tuple[str, ...] = ()) -> Conversation:
    return _alpaca(row, keys)  # built alternating: nothing to repair


_CONVERTERS = {"alpaca": _alpaca_row, "sharegpt": _chat, "openai": _chat}


def to_conversation(
    row: Any,
    fmt: str,
    map_keys: KeyMap | Mapping[str, Any] | str | None = None,
    repair: Iterable[str] | str | None = None,
) -> Conversation:
    """Normalise one row (``source``/``row`` are left for the caller to set).

    ``repair``: ``--repair`` kinds (:mod:`packft.ingest.repairs`); the ones that changed the row are
    listed in ``conversation.meta["repaired"]``.

    Raises:
        InvalidRecord: the row is not a valid sample; ``.reason`` is one of the codes above.
        ValueError: unknown ``fmt``, bad ``map_keys`` or an unknown repair.
    """
    keys = get_key_map(normalize_format(fmt), map_keys)
    return _CONVERTERS[keys.fmt](_check_row(row), keys, tuple(parse_repairs(repair)))


def _check_columns(batch: RecordBatch, keys: KeyMap) -> bool:
    """Fail fast when no row of the first batch has an expected column (wrong handler or key).

    MindSpeed checks ``--map-keys`` against the dataset's columns up front; without this a typo
    in an optional key would silently drop that field from every sample. Returns whether the
    batch had any object rows to check.
    """
    dicts = [row for row in batch.rows if isinstance(row, Mapping)]
    if not dicts:
        return False
    present = {key for row in dicts for key in row}
    missing = {k: v for k, v in keys.expected_columns().items() if v not in present}
    if missing:
        raise ValueError(
            f"{batch.source}: no row among the first {len(batch.rows)} has the field(s) "
            f"{', '.join(f'{v!r} ({k})' for k, v in missing.items())} that format {keys.fmt!r} "
            f"needs; the rows have {sorted(present)[:20]}. Check --handler-name and --map-keys."
        )
    return True


def iter_conversations(
    batches: Iterable[RecordBatch],
    fmt: str,
    map_keys: KeyMap | Mapping[str, Any] | str | None,
    rejects: RejectLog,
    repair: Iterable[str] | str | None = None,
) -> Iterator[list[Conversation]]:
    """One list of valid conversations per input batch (possibly empty); rejects go to the log.

    ``repair``: ``--repair`` kinds; kept records they changed are counted in ``rejects.repaired``.

    Raises:
        InvalidRecordError: from ``rejects`` when it was opened with ``on_invalid="fail"``.
    """
    keys = get_key_map(normalize_format(fmt), map_keys)
    convert = functools.partial(_CONVERTERS[keys.fmt], repair=tuple(parse_repairs(repair)))
    checked = False
    for batch in batches:
        if not checked:
            checked = _check_columns(batch, keys)
        valid: list[Conversation] = []
        for offset, row in enumerate(batch.rows):
            try:
                conversation = convert(_check_row(row), keys)
            except InvalidRecord as exc:
                rejects.add(batch.source, batch.start_row + offset, exc, row)
                continue
            conversation.source = batch.source
            conversation.row = batch.start_row + offset
            rejects.repaired.update(conversation.meta.get("repaired", ()))
            valid.append(conversation)
        rejects.count(len(batch.rows), len(valid))
        yield valid


def validate_file(
    path: Path,
    fmt: str,
    map_keys: KeyMap | Mapping[str, Any] | str | None = None,
    rejects_path: Path | None = None,
    on_invalid: str = "skip",
    *,
    batch_size: int = 2048,
    repair: Iterable[str] | str | None = None,
    limits: RecordLimits | None = None,
) -> ValidationSummary:
    """Read and check every record of one file; write the rejects file; return the counts.

    ``limits`` bounds each record's size and nesting (:mod:`packft.ingest.limits`); records over
    them are rejected as ``too_large`` / ``too_deep``.

    Raises:
        InvalidRecordError: first invalid record when ``on_invalid="fail"``.
        ValueError: unknown format, bad ``map_keys`` or repair (before any reading).
    """
    keys = get_key_map(normalize_format(fmt), map_keys)
    repairs = parse_repairs(repair)
    with RejectLog(rejects_path, on_invalid) as log:
        batches = iter_record_batches(path, batch_size, limits)
        for _ in iter_conversations(batches, keys.fmt, keys, log, repairs):
            pass
    return log.summary()
