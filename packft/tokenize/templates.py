"""Prompt templates: a :class:`~packft.ingest.records.Conversation` -> (source, target) per turn.

Algorithm (MindSpeed-LLM's ``Template._encode``, i.e. LLaMA-Factory 0.8.2): message ``i`` becomes
a list of pieces. Message 0 starts with the template prefix and, when there is a system prompt
(or the template's default one) or tools, the system block (``llama2``: inside the first user
string instead); every later prompt-side message starts with the separator. Then the role's
slots are filled: user/observation/assistant with ``{{content}}``, function calls with
``{{name}}``/``{{arguments}}`` parsed from the JSON content. Pairs of messages form a
:class:`Turn` ``(source, target)``; labels are -100 on every source token and the target tokens
are trained, for every turn. A string piece is tokenized on its own with
``add_special_tokens=False`` (never joined to its neighbours), an ``int`` piece is a token id.
Rendering touches no tokenizer code except a cached lookup of bos/eos ids, so a whole batch's
strings can be encoded in one call (see :mod:`packft.tokenize`).

``hf`` renders with the tokenizer's own ``chat_template`` instead. It renders the whole
conversation once, then, for each assistant message ``k``, the prefix ``messages[:k]`` with the
generation prompt (``P``) and ``messages[:k+1]`` (``F``); the text between ``len(P)`` and
``len(F)`` (minus whitespace trailing after the message's content, which goes to the next source)
is the trained target and everything before it the source. A template whose renderings are not
prefixes of each other (e.g. one that rewrites earlier turns) raises :class:`TemplateError`.
Cost: 2k+1 jinja renders for k assistant turns (~0.1 ms each), against ~5 us for table templates.

Tools and function calls: every table template uses MindSpeed's "default" tool format (the tool
list rendered as a ReAct-style text appended to the system prompt; a function call rendered as
``Action: name\\nAction Input: {json}`` + eos). ``hf`` passes the tools to the chat template and
function calls as OpenAI ``tool_calls``; a chat template that ignores tools drops them.

``load_tokenizer`` applies MindSpeed's ``fix_model_tokenizer``: templates with ``replace_eos``
(qwen, chatml, llama3) make their first stop word the eos (added as a special token when the
vocabulary lacks it), remaining stop words become special tokens, a missing eos becomes
``<|endoftext|>`` and a missing pad becomes the eos.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from packft.core.errors import PackftError
from packft.ingest.records import Conversation
from packft.tokenize.template_table import (
    DEFAULTS,
    TABLE,
    TOOL_JSON_HINT,
    TOOL_PROMPT,
    Slot,
    Special,
)

Piece = str | int
Spans = tuple[tuple[int, int], ...]
"""Character ranges ``[start, end)`` of a piece that hold a message's own text."""


class TemplateError(ValueError):
    """A template cannot render a conversation, or a template/tokenizer pair is unusable."""


class Turn(NamedTuple):
    """One prompt/answer pair: ``source`` is never trained, ``target`` always is."""

    source: list[Piece]
    target: list[Piece]


# --- special ids -------------------------------------------------------------------------------

_SPECIALS: dict[int, tuple[Any, dict[object, int | None]]] = {}


def _special_id(tokenizer: Any, slot: Special) -> int | None:
    """bos/eos id, cached per tokenizer object (transformers' property costs ~2 us each)."""
    entry = _SPECIALS.get(id(tokenizer))
    if entry is None or entry[0] is not tokenizer:
        entry = (tokenizer, {})
        _SPECIALS[id(tokenizer)] = entry
    cache = entry[1]
    if slot not in cache:
        cache[slot] = tokenizer.bos_token_id if slot.which == "bos" else tokenizer.eos_token_id
    return cache[slot]


def _forget_specials(tokenizer: Any) -> None:
    _SPECIALS.pop(id(tokenizer), None)


# --- tools and function calls (MindSpeed's "default" tool format) ------------------------------


def format_tools(tools: str) -> str:
    """The tool prompt appended to the system prompt; "" for no tools or unparsable JSON.

    Mirrors MindSpeed's ToolFormatter(tool_format="default"): any malformed tool list gives ""
    (silently, as there), which is why the ingest step validates ``tools`` JSON up front.
    """
    try:
        parsed = json.loads(tools)
        if not parsed:
            return ""
        tool_text, names = "", []
        for tool in parsed:
            params = ""
            for pname, param in tool["parameters"]["properties"].items():
                required = ", required" if pname in tool["parameters"].get("required", []) else ""
                enum = param.get("enum")
                enum = ", should be one of [{}]".format(", ".join(enum)) if enum else ""
                items = param.get("items")
                items = (
                    ", where each item should be {}".format(items.get("type", "")) if items else ""
                )
                params += "  - {} ({}{}): {}{}{}\n".format(
                    pname,
                    param.get("type", ""),
                    required,
                    param.get("description", ""),
                    enum,
                    items,
                )
            tool_text += "> Tool Name: {}\nTool Description: {}\nTool Args:\n{}\n".format(
                tool["name"], tool.get("description", ""), params
            )
            names.append(tool["name"])
        return TOOL_PROMPT.format(
            tool_text=tool_text, tool_names=", ".join(names), format_prompt=TOOL_JSON_HINT
        )
    except Exception:  # noqa: BLE001 - MindSpeed maps every malformed tool list to no tools
        return ""


def _function_fields(content: str) -> tuple[str, str]:
    """(name, arguments JSON) of a function-call message; ("", "") when it is not that JSON."""
    try:
        call = json.loads(content)
        return call["name"], json.dumps(call["arguments"], ensure_ascii=False)
    except Exception:  # noqa: BLE001 - MindSpeed renders malformed calls as empty fields
        return "", ""


# --- table templates ---------------------------------------------------------------------------


def _substitute(slot: str, values: dict[str, str], text_from: int) -> tuple[str, Spans]:
    """``slot`` filled exactly like ``_fill`` does (``{{content}}`` once, other placeholders
    everywhere, keys in order) plus the spans of the inserted values, minus each value's first
    ``text_from`` characters (llama2's system block inside the first user turn)."""
    spans: list[tuple[int, int]] = []
    for key, value in values.items():
        mark = "{{" + key + "}}"
        at, count = 0, 0
        while (at := slot.find(mark, at)) >= 0 and (key != "content" or count == 0):
            slot = slot[:at] + value + slot[at + len(mark) :]
            shift = len(value) - len(mark)
            spans = [(a + shift, b + shift) if a >= at + len(mark) else (a, b) for a, b in spans]
            skip = text_from if key == "content" else 0
            if len(value) > skip:
                spans.append((at + skip, at + len(value)))
            at, count = at + len(value), count + 1
    return slot, tuple(sorted(spans))


@dataclass(frozen=True)
class Template:
    """One ``--prompt-type``: slot lists per role plus MindSpeed's template flags."""

    name: str
    user: tuple[Slot, ...]
    assistant: tuple[Slot, ...]
    system: tuple[Slot, ...]
    function: tuple[Slot, ...]
    observation: tuple[Slot, ...] | None
    separator: tuple[Slot, ...]
    prefix: tuple[Slot, ...]
    default_system: str
    stop_words: tuple[str, ...]
    replace_eos: bool
    system_in_user: bool

    def _fill(
        self,
        slots: tuple[Slot, ...],
        out: list[Piece],
        tok: Any,
        spans: list[Spans] | None = None,
        text_from: int = 0,
        **values: str,
    ) -> None:
        """Append the filled slots to ``out``; with ``spans``, also each piece's text spans:
        where the message's own text (from ``text_from`` on within each value) landed."""
        for slot in slots:
            if isinstance(slot, str):
                if spans is None:
                    for key, value in values.items():
                        slot = slot.replace("{{" + key + "}}", value, 1 if key == "content" else -1)
                    found: Spans = ()
                else:
                    slot, found = _substitute(slot, values, text_from)
                if slot:
                    out.append(slot)
                    if spans is not None:
                        spans.append(found)
            else:
                tid = _special_id(tok, slot)
                if tid is not None:
                    out.append(tid)
                    if spans is not None:
                        spans.append(())

    def render(self, conv: Conversation, tokenizer: Any) -> list[Turn]:
        """The conversation as (source, target) pieces per turn, untruncated."""
        return self._render(conv, tokenizer, None)

    def render_with_spans(
        self, conv: Conversation, tokenizer: Any
    ) -> tuple[list[Turn], list[list[Spans]]]:
        """:meth:`render` plus, per message (turn 0 source, turn 0 target, ...) and per piece,
        the character spans of the message's own text (user/assistant/observation content, a
        function call's name and arguments): everything else is the template's markers (and the
        system prompt), which marker-keeping truncation never cuts."""
        spans: list[list[Spans]] = []
        return self._render(conv, tokenizer, spans), spans

    def _render(
        self, conv: Conversation, tokenizer: Any, all_spans: list[list[Spans]] | None
    ) -> list[Turn]:
        system = conv.system or self.default_system
        tools = conv.tools
        messages = conv.messages
        pieces: list[list[Piece]] = []
        for i, msg in enumerate(messages):
            out: list[Piece] = []
            spans: list[Spans] | None = None if all_spans is None else []
            system_text = ""
            if i == 0:
                self._fill(self.prefix, out, tokenizer, spans)
                if system or tools:
                    body = system + (format_tools(tools) if tools else "")
                    if self.system_in_user:
                        first = self.system[0]
                        system_text = first.replace("{{content}}", body, 1)
                    else:  # the system prompt is not the message's text: no spans
                        self._fill(self.system, out, tokenizer, spans, len(body), content=body)
            elif i % 2 == 0:
                self._fill(self.separator, out, tokenizer, spans)
            role = msg.role
            if role == "user":
                text = system_text + msg.content
                self._fill(self.user, out, tokenizer, spans, len(system_text), content=text)
            elif role == "assistant":
                self._fill(self.assistant, out, tokenizer, spans, content=msg.content)
            elif role == "observation":
                slots = self.observation or self.user
                self._fill(slots, out, tokenizer, spans, content=msg.content)
            elif role == "function":
                name, arguments = _function_fields(msg.content)
                self._fill(self.function, out, tokenizer, spans, name=name, arguments=arguments)
            else:
                raise TemplateError(
                    f"template {self.name!r}: unexpected role {role!r} in {conv.source} row "
                    f"{conv.row}; roles are user, assistant, function, observation"
                )
            pieces.append(out)
            if all_spans is not None and spans is not None:
                all_spans.append(spans)
        if len(pieces) % 2:
            raise TemplateError(
                f"{conv.source} row {conv.row}: a conversation must end with an answer "
                f"(assistant or function turn); got {len(pieces)} messages"
            )
        return [Turn(pieces[i], pieces[i + 1]) for i in range(0, len(pieces), 2)]


# --- hf: the tokenizer's own chat_template -----------------------------------------------------


def _hf_messages(conv: Conversation) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "system", "content": conv.system}] if conv.system else []
    for msg in conv.messages:
        if msg.role == "function":
            try:
                call = json.loads(msg.content)
                fn = {"name": call["name"], "arguments": call["arguments"]}
                out.append(
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": fn}],
                    }
                )
            except (ValueError, KeyError, TypeError):
                out.append({"role": "assistant", "content": msg.content})
        elif msg.role == "observation":
            out.append({"role": "tool", "content": msg.content})
        else:
            out.append({"role": msg.role, "content": msg.content})
    return out


@dataclass(frozen=True)
class ChatTemplate:
    """``hf``: the tokenizer's chat_template, labels on the assistant spans only."""

    name: str = "hf"
    replace_eos: bool = False
    stop_words: tuple[str, ...] = ()

    def render_with_spans(
        self, conv: Conversation, tokenizer: Any
    ) -> tuple[list[Turn], list[list[Spans]] | None]:
        """:meth:`render` and ``None``: where a chat template put the text is not tracked, so
        every token counts as the template's and truncation keeps MindSpeed's cut."""
        return self.render(conv, tokenizer), None

    def render(self, conv: Conversation, tokenizer: Any) -> list[Turn]:
        """(source, target) text pieces found by rendering prefixes (see module docstring)."""
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(
                f"--prompt-type hf needs a tokenizer with a chat_template; "
                f"{getattr(tokenizer, 'name_or_path', tokenizer)} has none. Use a table template "
                f"instead: {', '.join(n for n in TEMPLATE_NAMES if n != 'hf')}"
            )
        msgs = _hf_messages(conv)
        tools = json.loads(conv.tools) if conv.tools.strip() else None

        def text(upto: int, gen: bool) -> str:
            try:
                return tokenizer.apply_chat_template(
                    msgs[:upto], tools=tools, tokenize=False, add_generation_prompt=gen
                )
            except Exception as exc:  # jinja errors, raise_exception() in the template
                raise TemplateError(
                    f"chat_template failed on {conv.source} row {conv.row} "
                    f"(first {upto} messages): {exc}"
                ) from exc

        full = text(len(msgs), False)
        turns: list[Turn] = []
        pos = 0
        for k, msg in enumerate(msgs):
            if msg["role"] != "assistant":
                continue
            prompt, done = text(k, True), text(k + 1, False)
            if not (done.startswith(prompt) and full.startswith(done) and len(prompt) >= pos):
                raise TemplateError(
                    f"chat_template of {getattr(tokenizer, 'name_or_path', '?')} does not render "
                    f"prefixes of a conversation as prefixes (message {k} of {conv.source} row "
                    f"{conv.row}); use a table template for this tokenizer"
                )
            target = done[len(prompt) :]
            found = target.find(msg["content"]) if msg["content"] else -1
            content_end = found + len(msg["content"]) if found >= 0 else 0
            target = target[: max(len(target.rstrip()), content_end)]
            turns.append(Turn([full[pos : len(prompt)]], [target]))
            pos = len(prompt) + len(target)
        rest = full[pos:]
        if rest.strip() and turns:
            turns[-1].target.append(rest)
        return [Turn([p for p in t.source if p], [p for p in t.target if p]) for t in turns]


# --- registry ----------------------------------------------------------------------------------


def _build(name: str) -> Template:
    spec = {**DEFAULTS, **TABLE[name]}
    return Template(
        name=name, **{f.name: spec[f.name] for f in fields(Template) if f.name != "name"}
    )


TEMPLATES: dict[str, Template | ChatTemplate] = {n: _build(n) for n in TABLE}
TEMPLATES["hf"] = ChatTemplate()
TEMPLATE_NAMES: tuple[str, ...] = tuple(sorted(TEMPLATES))


def get_template(name: str) -> Template | ChatTemplate:
    """The template registered as ``name`` (a MindSpeed ``--prompt-type`` or ``hf``).

    Raises:
        ValueError: unknown name; the message lists the valid ones.
    """
    key = name.strip()
    if key not in TEMPLATES:
        raise ValueError(
            f"unknown prompt type {name!r}; valid: {', '.join(TEMPLATE_NAMES)} "
            "(pass one with --prompt-type)"
        )
    return TEMPLATES[key]


def fix_tokenizer(tokenizer: Any, template: Template | ChatTemplate) -> None:
    """MindSpeed's ``fix_model_tokenizer``: eos replacement, stop words, pad = eos if missing."""
    stop_words = list(template.stop_words)
    if template.replace_eos:
        tokenizer.add_special_tokens({"eos_token": stop_words.pop(0)})
    if tokenizer.eos_token_id is None:
        tokenizer.add_special_tokens({"eos_token": "<|endoftext|>"})
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if stop_words:
        tokenizer.add_special_tokens({"additional_special_tokens": stop_words})
    _forget_specials(tokenizer)


def load_tokenizer(path: str | Path, template_name: str) -> Any:
    """A fast HF tokenizer from ``path`` (dir or hub id), fixed up for ``template_name``.

    Raises:
        ValueError: unknown template, or a tokenizer without a fast (Rust) backend, or ``hf``
            with a tokenizer that has no chat_template.
        FileNotFoundError: a local-looking path that does not exist.
    """
    from transformers import AutoTokenizer  # heavy import; only where a tokenizer is needed

    template = get_template(template_name)
    local = Path(path).expanduser()
    if not local.exists() and (local.is_absolute() or str(path).startswith((".", "~"))):
        raise FileNotFoundError(
            f"tokenizer {path} does not exist; pass --tokenizer-name-or-path a Hugging Face "
            "tokenizer directory (tokenizer.json or tokenizer.model + configs) or a hub id"
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(local if local.exists() else path), use_fast=True
        )
    except (OSError, ValueError, KeyError) as error:  # transformers' multi-line messages
        first = next((ln.strip() for ln in str(error).splitlines() if ln.strip()), "").rstrip(":")
        holds = (
            f"; the directory holds {sorted(p.name for p in local.iterdir())[:12]}"
            if local.is_dir()
            else " (a hub id needs network, or the hub cache with HF_HUB_OFFLINE=1)"
        )
        raise PackftError(
            f"cannot load a tokenizer from {path}: {type(error).__name__}: {first[:200]}{holds}. "
            "--tokenizer-name-or-path needs a Hugging Face tokenizer directory (tokenizer.json, "
            "or tokenizer.model with tokenizer_config.json) or a hub id"
        ) from error
    if getattr(tokenizer, "_tokenizer", None) is None:
        raise ValueError(
            f"{path}: packft needs a fast tokenizer (tokenizer.json or a convertible "
            "SentencePiece/BPE model); this one only loads as a slow Python tokenizer"
        )
    if template.name == "hf" and not tokenizer.chat_template:
        raise TemplateError(
            f"--prompt-type hf needs a chat_template, and {path} has none; use one of "
            f"{', '.join(n for n in TEMPLATE_NAMES if n != 'hf')}"
        )
    fix_tokenizer(tokenizer, template)
    return tokenizer
