"""Templates against hand-derived ids.

Every expected list below was written from the template definition (MindSpeed-LLM's
configs/finetune/templates.json, see packft/template_table.py): the template's strings were
split into the pieces MindSpeed tokenizes one by one, each piece was encoded on its own with the
plain tokenizer (``AutoTokenizer(...).encode(piece, add_special_tokens=False)``, plus the
template's eos fix-up where it adds a token) and the results were pasted here as literals. The
code under test never produced them.
"""

from __future__ import annotations

from functools import cache

import pytest

from packft.ingest.records import Conversation, Message
from packft.tokenize.batch import encode_conversations
from packft.tokenize.options import TokenizeOptions
from packft.tokenize.templates import (
    TEMPLATE_NAMES,
    TemplateError,
    Turn,
    format_tools,
    get_template,
    load_tokenizer,
)

X = -100  # IGNORE_INDEX


@cache
def _tok(path: str, template: str):
    return load_tokenizer(path, template)


def conv(*turns: str, system: str = "", tools: str = "") -> Conversation:
    roles = ["user", "assistant"]
    return Conversation(
        [Message(roles[i % 2], t) for i, t in enumerate(turns)], system=system, tools=tools
    )


def encode(c: Conversation, template: str, tok_dir, **opts) -> tuple[list[int], list[int]]:
    tok = _tok(str(tok_dir), template)
    b = encode_conversations([c], get_template(template), tok, TokenizeOptions(**opts))
    return b.ids.tolist(), b.labels.tolist()


# --- llama2 ----------------------------------------------------------------------------------

L_SYS_Q1 = [518, 25580, 29962, 3532, 14816, 29903, 6778, 13, 3629, 11473, 29889, 13, 29966, 829]
L_SYS_Q1 += [14816, 29903, 6778, 13, 13, 5618, 338, 29871, 29906, 29974, 29906, 29973, 518, 29914]
L_SYS_Q1 += [25580, 29962]  # "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nWhat is 2+2? [/INST]"
L_A1 = [29871, 29946]  # "4"
L_Q2 = [518, 25580, 29962, 1126, 29871, 29941, 29974, 29941, 29973, 518, 29914, 25580, 29962]
L_A2 = [29871, 29953]  # "6"


def test_llama2_system_multiturn_exact(llama2_tokenizer_dir):
    c = conv("What is 2+2?", "4", "And 3+3?", "6", system="Be brief.")
    ids, labels = encode(c, "llama2", llama2_tokenizer_dir)
    assert ids == [1] + L_SYS_Q1 + L_A1 + [2] + [1] + L_Q2 + L_A2 + [2]
    assert labels == [X] * 31 + L_A1 + [2] + [X] * 14 + L_A2 + [2]


def test_llama2_append_eod_trains_extra_eos(llama2_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok"), "llama2", llama2_tokenizer_dir, append_eod=True)
    inst_hi = [518, 25580, 29962, 7251, 518, 29914, 25580, 29962]  # "[INST] hi [/INST]"
    assert ids == [1] + inst_hi + [3431, 2, 2]  # "ok" = [3431]
    assert labels == [X] * 9 + [3431, 2, 2]


def test_llama2_render_pieces(llama2_tokenizer_dir):
    tok = _tok(str(llama2_tokenizer_dir), "llama2")
    turns = get_template("llama2").render(conv("q1", "a1", "q2", "a2", system="S"), tok)
    assert turns == [
        Turn([1, "[INST] <<SYS>>\nS\n<</SYS>>\n\nq1 [/INST]"], ["a1", 2]),
        Turn([1, "[INST] q2 [/INST]"], ["a2", 2]),
    ]


# --- qwen (chatml, MindSpeed's default system prompt, eos = <|im_end|>) -------------------------

Q_DEFAULT_SYS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
Q_USER1 = [151644, 872, 198, 13048, 1052, 151645, 198, 151644, 77091, 198]  # Hi there
Q_USER2 = [151644, 872, 198, 3036, 220, 18, 10, 18, 30, 151645, 198, 151644, 77091, 198]


def test_qwen_multiturn_exact(qwen_tokenizer_dir):
    c = conv("Hi there", "Hello!", "And 3+3?", "6")
    ids, labels = encode(c, "qwen", qwen_tokenizer_dir)
    assert ids == Q_DEFAULT_SYS + Q_USER1 + [9707, 0, 151645] + [198] + Q_USER2 + [21, 151645]
    assert labels == [X] * 21 + [9707, 0, 151645] + [X] * 15 + [21, 151645]


def test_qwen_with_llama2_tokenizer_replaces_eos(llama2_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok"), "qwen", llama2_tokenizer_dir)
    sys_ = [529, 29989, 326, 29918, 2962, 29989, 29958, 5205, 13, 3492, 526, 263, 8444, 20255]
    sys_ += [29889, 32000, 29871, 13]  # <|im_end|> was added as id 32000
    user = [529, 29989, 326, 29918, 2962, 29989, 29958, 1792, 13, 2918, 32000, 29871, 13, 29966]
    user += [29989, 326, 29918, 2962, 29989, 29958, 465, 22137, 13]
    assert ids == sys_ + user + [3431, 32000]
    assert labels == [X] * (len(sys_) + len(user)) + [3431, 32000]


TOOLS = (
    '[{"name": "get_time", "description": "Current time", "parameters": {"type": "object", '
    '"properties": {"tz": {"type": "string", "description": "Time zone", "enum": ["UTC", '
    '"CET"]}}, "required": ["tz"]}}]'
)
TOOL_TEXT = (
    "You have access to the following tools:\n"
    "> Tool Name: get_time\nTool Description: Current time\nTool Args:\n"
    "  - tz (string, required): Time zone, should be one of [UTC, CET]\n\n"
    "Use the following format if using a tool:\n```\n"
    "Action: tool name (one of [get_time]).\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    '(e.g. ```{"input": "hello world", "num_beams": 5}```).\n```\n'
)


def test_default_tool_prompt_text():
    assert format_tools(TOOLS) == TOOL_TEXT
    assert format_tools("[]") == ""
    assert format_tools("not json") == ""  # MindSpeed silently drops malformed tool lists


def tool_call_conversation() -> Conversation:
    """A user question, the assistant's function call, its observation and the answer."""
    return Conversation(
        [
            Message("user", "Time?"),
            Message("function", '{"name": "get_time", "arguments": {"tz": "UTC"}}'),
            Message("observation", '{"time": "12:00"}'),
            Message("assistant", "Noon."),
        ],
        tools=TOOLS,
    )


def test_qwen_tools_function_observation_pieces(qwen_tokenizer_dir):
    tok = _tok(str(qwen_tokenizer_dir), "qwen")
    c = tool_call_conversation()
    turns = get_template("qwen").render(c, tok)
    system = "<|im_start|>system\nYou are a helpful assistant." + TOOL_TEXT + "<|im_end|>\n"
    assert turns == [
        Turn(
            [system, "<|im_start|>user\nTime?<|im_end|>\n<|im_start|>assistant\n"],
            ['Action: get_time\nAction Input: {"tz": "UTC"}', 151645],
        ),
        Turn(
            ["\n", '<|im_start|>tool\n{"time": "12:00"}<|im_end|>\n<|im_start|>assistant\n'],
            ["Noon.", 151645],
        ),
    ]


def test_malformed_function_call_renders_empty_fields(qwen_tokenizer_dir):
    tok = _tok(str(qwen_tokenizer_dir), "qwen")
    c = Conversation([Message("user", "a"), Message("function", "not json")])
    assert get_template("qwen").render(c, tok)[0].target == ["Action: \nAction Input: ", 151645]


# --- llama3, mistral, alpaca, empty -------------------------------------------------------------


def test_llama3_with_llama2_tokenizer(llama2_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok", system="Be brief."), "llama3", llama2_tokenizer_dir)
    head = [529, 29989, 2962, 29918, 6672, 29918, 333, 29989, 29958]  # "<|start_header_id|>"
    end = [29966, 29989, 355, 29918, 6672, 29918, 333, 29989, 29958, 13, 13]  # "<|end_h...|>\n\n"
    system = head + [5205] + end + [3629, 11473, 29889, 32000]  # <|eot_id|> -> new id 32000
    user = head + [1792] + end + [2918, 32000] + head + [465, 22137] + end
    assert ids == [1] + system + user + [3431, 32000]
    assert labels == [X] * (1 + len(system) + len(user)) + [3431, 32000]


def test_mistral_one_bos_no_system_block(llama2_tokenizer_dir, qwen_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok", "bye", "x"), "mistral", llama2_tokenizer_dir)
    inst_hi = [518, 25580, 29962, 7251, 518, 29914, 25580, 29962]
    inst_bye = [518, 25580, 29962, 491, 29872, 518, 29914, 25580, 29962]
    assert ids == [1] + inst_hi + [3431, 2] + inst_bye + [921, 2]
    assert labels == [X] * 9 + [3431, 2] + [X] * 9 + [921, 2]
    # qwen has no bos: the prefix slot adds nothing; the system is a plain piece before [INST].
    ids, labels = encode(conv("hi", "ok", system="Be brief."), "mistral", qwen_tokenizer_dir)
    assert ids == [3430, 9814, 13] + [58, 64462, 60, 15588, 64928, 64462, 60] + [562, 151645]
    assert labels == [X] * 10 + [562, 151645]


def test_alpaca_default_system_and_separator(llama2_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok", "bye", "x"), "alpaca", llama2_tokenizer_dir)
    system = [13866, 338, 385, 15278, 393, 16612, 263, 3414, 29889, 14350, 263, 2933, 393, 7128]
    system += [2486, 1614, 2167, 278, 2009, 29889, 13, 13]
    user_hi = [835, 2799, 4080, 29901, 13, 2918, 13, 13, 2277, 29937, 13291, 29901, 13]
    user_bye = [835, 2799, 4080, 29901, 13, 26966, 13, 13, 2277, 29937, 13291, 29901, 13]
    sep = [29871, 13, 13]
    assert ids == system + user_hi + [3431, 2] + sep + user_bye + [921, 2]
    assert labels == [X] * 35 + [3431, 2] + [X] * 16 + [921, 2]


def test_empty_template_has_no_eos(qwen_tokenizer_dir):
    ids, labels = encode(conv("hi", "ok"), "empty", qwen_tokenizer_dir)
    assert (ids, labels) == ([6023, 562], [X, 562])


# --- hf: the tokenizer's chat_template ----------------------------------------------------------


def test_hf_template_matches_chat_template_tokens(qwen_tokenizer_dir):
    tok = _tok(str(qwen_tokenizer_dir), "hf")
    c = conv("Hi there", "Hello!", "And 3+3?", "6", system="Be brief.")
    ids, labels = encode(c, "hf", qwen_tokenizer_dir)
    msgs = [{"role": "system", "content": "Be brief."}] + [
        {"role": m.role, "content": m.content} for m in c.messages
    ]
    full = tok.apply_chat_template(msgs, tokenize=True, return_dict=False)
    assert ids == full[:-1]  # all but the "\n" after the last <|im_end|>
    sys_user1 = [151644, 8948, 198, 3430, 9814, 13, 151645, 198] + Q_USER1
    assert labels == [X] * len(sys_user1) + [9707, 0, 151645] + [X] * 15 + [21, 151645]


def test_hf_template_tool_calls(qwen_tokenizer_dir):
    tok = _tok(str(qwen_tokenizer_dir), "hf")
    c = tool_call_conversation()
    ids, labels = encode(c, "hf", qwen_tokenizer_dir)
    trained = tok.decode([t for t in labels if t != X])
    call = '<tool_call>\n{"name": "get_time", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>'
    assert trained == call + "Noon.<|im_end|>"
    assert "# Tools" in tok.decode(ids) and "<tool_response>" in tok.decode(ids)


def test_hf_without_chat_template_is_a_clear_error(llama2_tokenizer_dir):
    with pytest.raises(TemplateError, match="chat_template"):
        load_tokenizer(llama2_tokenizer_dir, "hf")


# --- registry and tokenizer fix-ups -------------------------------------------------------------


def test_unknown_template_lists_valid_names():
    with pytest.raises(ValueError, match="llama2") as err:
        get_template("llama7")
    assert all(name in str(err.value) for name in TEMPLATE_NAMES)
    assert {"llama2", "qwen", "llama3", "mistral", "alpaca", "empty", "hf"} <= set(TEMPLATE_NAMES)


def test_missing_tokenizer_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer-name-or-path"):
        load_tokenizer(tmp_path / "nope", "llama2")


def test_load_tokenizer_fixups(llama2_tokenizer_dir, qwen_tokenizer_dir):
    t = load_tokenizer(llama2_tokenizer_dir, "llama2")
    assert (t.bos_token_id, t.eos_token_id, t.pad_token_id) == (1, 2, 2)  # pad = eos
    t = load_tokenizer(qwen_tokenizer_dir, "qwen")
    assert (t.eos_token, t.eos_token_id, t.pad_token_id) == ("<|im_end|>", 151645, 151643)
    t = load_tokenizer(llama2_tokenizer_dir, "llama3")
    assert (t.eos_token, t.eos_token_id, t.pad_token_id) == ("<|eot_id|>", 32000, 32000)
    t = load_tokenizer(llama2_tokenizer_dir, "chatml")  # second stop word becomes special
    assert t.encode("<|im_start|>", add_special_tokens=False) == [32001]


def test_a_directory_without_a_tokenizer_is_one_clear_error(tmp_path, llama2_tokenizer_dir):
    from packft.core.errors import PackftError, one_line
    from packft.tokenize.templates import load_tokenizer

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(PackftError) as info:
        load_tokenizer(tmp_path, "llama2")
    text = one_line(info.value)
    assert f"cannot load a tokenizer from {tmp_path}" in text
    assert "holds ['config.json']" in text and "tokenizer.json" in text
    assert "\n" not in str(info.value)
