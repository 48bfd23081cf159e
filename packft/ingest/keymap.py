"""``--map-keys``: each format's field and tag names, MindSpeed's defaults overlaid by the user's.

The defaults are MindSpeed-LLM's ``InstructionDatasetAttr`` names (``_COLUMNS``, ``_TAGS``; what
each field means is in :mod:`packft.ingest.formats`). :func:`resolve_map_keys` takes ``--map-keys``
as a dict or its JSON text and returns a frozen :class:`KeyMap`:

* a column key renames a field and ``null`` turns an optional field off; ``response`` and
  ``messages`` may be renamed but not turned off;
* tag keys (sharegpt, openai) may be given at the top level or under ``"tags"``; tags not given keep
  their defaults (MindSpeed resets them to None, which breaks every sample); a role tag
  (``user_tag``, ``assistant_tag``, ``observation_tag``, ``function_tag``, ``system_tag``) may also
  be a list, so several spellings map to one role: ShareGPT_V3's ``bing`` turns
  with ``{"assistant_tag": ["gpt", "bing"]}`` (an extension; MindSpeed takes one);
* MindSpeed's pairwise keys (``chosen``, ``rejected``, ``kto_tag``) and unknown keys are refused;
  every problem is reported in one ``ValueError`` that lists the allowed keys and the defaults.

A MindSpeed handler name (``AlpacaStyleInstructionHandler`` ...) is accepted wherever a format name
is (:func:`normalize_format`). Example: ``resolve_map_keys("sharegpt", {"messages": "chat",
"user_tag": "user"})`` gives ``columns["messages"] == "chat"``, ``tags["user_tag"] == "user"`` and
every other name at its default.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

__all__ = [
    "FORMATS",
    "HANDLER_FORMATS",
    "KeyMap",
    "get_key_map",
    "normalize_format",
    "resolve_map_keys",
]

HANDLER_FORMATS = {
    "AlpacaStyleInstructionHandler": "alpaca",
    "SharegptStyleInstructionHandler": "sharegpt",
    "OpenAIInstructionHandler": "openai",
}
FORMATS = ("alpaca", "sharegpt", "openai")
_COLUMNS: dict[str, dict[str, str]] = {
    "alpaca": {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "system": "system",
        "history": "history",
    },
    "sharegpt": {"messages": "conversations", "system": "system", "tools": "tools"},
    "openai": {"messages": "messages", "system": "system", "tools": "tools"},
}
_TAGS: dict[str, dict[str, str]] = {
    "sharegpt": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "observation_tag": "observation",
        "function_tag": "function_call",
        "system_tag": "system",
    },
    "openai": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "observation_tag": "tool",
        "function_tag": "function_call",
        "system_tag": "system",
    },
}
_REQUIRED = {"response", "messages"}  # may be renamed but not switched off
_PAIRWISE = {"chosen", "rejected", "kto_tag"}


_ROLE_TAGS = ("user_tag", "assistant_tag", "observation_tag", "function_tag", "system_tag")


@dataclass(frozen=True)
class KeyMap:
    """Resolved field and tag names for one format (defaults overlaid with ``--map-keys``)."""

    fmt: str
    columns: dict[str, str | None]
    tags: dict[str, str | list[str]] = field(default_factory=dict)  # lists: role tags only
    explicit: frozenset[str] = frozenset()  # column roles named in --map-keys

    def tag_values(self, key: str) -> tuple[str, ...]:
        """Every spelling of one role tag (a list in ``--map-keys`` or the single default)."""
        value = self.tags[key]
        return (value,) if isinstance(value, str) else tuple(value)

    def unknown_role_detail(self, where: str, tag: object) -> str:
        """Why a role tag is refused, and the ``--map-keys`` that would accept it."""
        role_tag = self.tags["role_tag"]
        hint = {"assistant_tag": [*self.tag_values("assistant_tag"), tag]}
        return (
            f"{where} {role_tag}={tag!r}; accepted: {sorted(self.roles())} (to accept it, list it "
            f"with its role's tags, e.g. --map-keys '{json.dumps(hint, ensure_ascii=False, default=str)}')"
        )

    def expected_columns(self) -> dict[str, str]:
        """Columns a file must have: required ones and every one named in ``--map-keys``."""
        wanted = {"prompt", "response", "messages"} | self.explicit
        return {k: v for k, v in self.columns.items() if k in wanted and v is not None}

    def roles(self) -> dict[str, str]:
        """Role tag in the data -> canonical role (system handled separately)."""
        mapping = {
            tag: role
            for key, role in (
                ("user_tag", "user"),
                ("assistant_tag", "assistant"),
                ("observation_tag", "observation"),
                ("function_tag", "function"),
            )
            for tag in self.tag_values(key)
        }
        if self.fmt == "openai":
            mapping.setdefault("function", "observation")  # legacy function-result messages
        return mapping


def normalize_format(fmt: str) -> str:
    """``alpaca``/``sharegpt``/``openai`` or a MindSpeed handler name -> the format name."""
    name = HANDLER_FORMATS.get(fmt, fmt)
    if name not in FORMATS:
        raise ValueError(
            f"unknown data format or handler {fmt!r}; use one of {', '.join(FORMATS)} or "
            f"{', '.join(HANDLER_FORMATS)} (MindSpeed silently falls back to pretraining here)"
        )
    return name


def resolve_map_keys(fmt: str, map_keys: Mapping[str, Any] | str | None) -> KeyMap:
    """Validate ``--map-keys`` (a dict or its JSON text) for ``fmt`` and overlay the defaults.

    Raises:
        ValueError: listing every unknown key or bad value at once.
    """
    fmt = normalize_format(fmt)
    if isinstance(map_keys, str):
        try:
            map_keys = json.loads(map_keys) if map_keys.strip() else None
        except ValueError as exc:
            raise ValueError(f"--map-keys is not valid JSON: {exc}") from None
    columns: dict[str, str | None] = dict(_COLUMNS[fmt])
    tags = dict(_TAGS.get(fmt, {}))
    if map_keys is None:
        return KeyMap(fmt, columns, tags)
    if not isinstance(map_keys, Mapping):
        raise ValueError(f"--map-keys must be a JSON object, got {type(map_keys).__name__}")
    problems: list[str] = []
    flat = dict(map_keys)
    nested = flat.pop("tags", None)
    if nested is not None:
        if not tags or not isinstance(nested, Mapping):
            problems.append(
                f"'tags' must be an object and only applies to sharegpt/openai, not {fmt}"
            )
        else:
            flat.update(nested)
    for key, value in flat.items():
        if key in columns:
            if value is None and key in _REQUIRED:
                problems.append(f"{key!r} cannot be null for {fmt}")
            elif value is not None and not isinstance(value, str):
                problems.append(f"{key!r} must name a field (string or null), got {value!r}")
            else:
                columns[key] = value
        elif key in tags:
            if isinstance(value, str) or (
                key in _ROLE_TAGS
                and isinstance(value, list)
                and value
                and all(isinstance(v, str) for v in value)
            ):
                tags[key] = value
            else:
                kind = (
                    "a string or a non-empty list of strings" if key in _ROLE_TAGS else "a string"
                )
                problems.append(f"tag {key!r} must be {kind}, got {value!r}")
        elif key in _PAIRWISE:
            problems.append(f"{key!r} is for MindSpeed's pairwise handlers; packft builds SFT data")
        else:
            problems.append(f"unknown key {key!r}")
    if not problems and tags:
        problems += _shared_role_tags(tags)
    if problems:
        allowed = sorted(columns) + (["tags", *sorted(tags)] if tags else [])
        raise ValueError(
            f"--map-keys for {fmt}: {'; '.join(problems)}. Allowed keys: {', '.join(allowed)}; "
            f"defaults: {json.dumps({**_COLUMNS[fmt], **({'tags': _TAGS[fmt]} if tags else {})})}"
        )
    explicit = frozenset(k for k, v in flat.items() if k in columns and v is not None)
    return KeyMap(fmt, columns, tags, explicit)


def _shared_role_tags(tags: dict[str, str | list[str]]) -> list[str]:
    """A tag may stand for one role only (``bing`` as user and assistant is ambiguous)."""
    owner: dict[str, str] = {}
    problems = []
    for key in _ROLE_TAGS:
        values = [tags[key]] if isinstance(tags[key], str) else tags[key]
        for value in values:
            if value in owner and owner[value] != key:
                problems.append(f"tag {value!r} is both {owner[value]} and {key}")
            owner.setdefault(value, key)
    return problems


@lru_cache(maxsize=64)
def _cached_key_map(fmt: str, map_keys_json: str) -> KeyMap:
    return resolve_map_keys(fmt, json.loads(map_keys_json))


def get_key_map(fmt: str, map_keys: KeyMap | Mapping[str, Any] | str | None) -> KeyMap:
    """A resolved :class:`KeyMap` from a KeyMap (checked against ``fmt``), a dict or JSON text.

    Dicts are resolved once per distinct content (cached), so per-row callers may pass them as is.
    """
    if isinstance(map_keys, KeyMap):
        if map_keys.fmt != fmt:
            raise ValueError(f"key map was resolved for {map_keys.fmt!r}, not {fmt!r}")
        return map_keys
    if isinstance(map_keys, str):
        return resolve_map_keys(fmt, map_keys)
    return _cached_key_map(fmt, json.dumps(map_keys, sort_keys=True))
