"""The prompt templates packft ships, as data: MindSpeed-LLM's ``--prompt-type`` definitions.

Each entry restates one entry of MindSpeed-LLM's ``configs/finetune/templates.json`` (which is
LLaMA-Factory 0.8.2's template table) plus the defaults MindSpeed's ``_register_template`` fills
in for fields an entry leaves out:

* assistant: ``["{{content}}", eos]`` (the eos is trained), function: the ReAct-style
  ``"Action: {{name}}\\nAction Input: {{arguments}}"`` + eos, tools: the "default" tool prompt
  (see :func:`packft.tokenize.templates.format_tools`), observation: the user format, system:
  ``"{{content}}"``, no separator, no prefix, no default system prompt.

A slot is either a string (placeholders ``{{content}}``, ``{{name}}``, ``{{arguments}}``; each
string is tokenized on its own with ``add_special_tokens=False``) or :data:`BOS`/:data:`EOS` (the
tokenizer's id, skipped when the tokenizer has none). MindSpeed's ``{"token": ...}`` slots are
not needed by any template here.

Worked example, ``llama2`` with system "S" and two turns::

    <s> "[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\nq1 [/INST]" "a1" </s> <s> "[INST] q2 [/INST]" "a2" </s>

where each quoted string is tokenized separately, so "a1" starts with SentencePiece's "▁".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True, slots=True)
class Special:
    """The tokenizer's bos or eos id (whatever it is after the template's eos fix-up)."""

    which: str  # "bos" | "eos"


Slot = str | Special
BOS: Final = Special("bos")
EOS: Final = Special("eos")

# Field defaults MindSpeed's _register_template applies when a json entry omits the field.
DEFAULTS: Final[dict[str, object]] = {
    "assistant": ("{{content}}", EOS),
    "system": ("{{content}}",),
    "function": ("Action: {{name}}\nAction Input: {{arguments}}", EOS),
    "observation": None,  # None: same slots as "user"
    "separator": (),
    "prefix": (),
    "default_system": "",
    "stop_words": (),
    "replace_eos": False,
    "system_in_user": False,
}

_CHATML_USER = "<|im_start|>user\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_CHATML_SYSTEM = "<|im_start|>system\n{{content}}<|im_end|>\n"
_CHATML_TOOL = "<|im_start|>tool\n{{content}}<|im_end|>\n<|im_start|>assistant\n"
_L3_USER = (
    "<|start_header_id|>user<|end_header_id|>\n\n{{content}}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
_L3_TOOL = (
    "<|start_header_id|>tool<|end_header_id|>\n\n{{content}}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)

# name -> the fields that differ from DEFAULTS (same facts as MindSpeed's templates.json).
TABLE: Final[dict[str, dict[str, object]]] = {
    # Llama2Template: the system block goes inside the first user string; a bos per user turn.
    "llama2": {
        "user": (BOS, "[INST] {{content}} [/INST]"),
        "system": ("<<SYS>>\n{{content}}\n<</SYS>>\n\n",),
        "system_in_user": True,
    },
    "qwen": {
        "user": (_CHATML_USER,),
        "system": (_CHATML_SYSTEM,),
        "observation": (_CHATML_TOOL,),
        "separator": ("\n",),
        "default_system": "You are a helpful assistant.",
        "stop_words": ("<|im_end|>",),
        "replace_eos": True,
    },
    "chatml": {
        "user": (_CHATML_USER,),
        "system": (_CHATML_SYSTEM,),
        "observation": (_CHATML_TOOL,),
        "separator": ("\n",),
        "stop_words": ("<|im_end|>", "<|im_start|>"),
        "replace_eos": True,
    },
    "llama3": {
        "user": (_L3_USER,),
        "system": ("<|start_header_id|>system<|end_header_id|>\n\n{{content}}<|eot_id|>",),
        "observation": (_L3_TOOL,),
        "prefix": (BOS,),
        "stop_words": ("<|eot_id|>",),
        "replace_eos": True,
    },
    "mistral": {"user": ("[INST] {{content}} [/INST]",), "prefix": (BOS,)},
    "mixtral": {"user": ("[INST] {{content}} [/INST]",), "prefix": (BOS,)},
    "alpaca": {
        "user": ("### Instruction:\n{{content}}\n\n### Response:\n",),
        "separator": ("\n\n",),
        "default_system": (
            "Below is an instruction that describes a task. "
            "Write a response that appropriately completes the request.\n\n"
        ),
    },
    "default": {
        "user": ("Human: {{content}}\nAssistant:",),
        "system": ("{{content}}\n",),
        "separator": ("\n",),
    },
    # No eos on the answer: the raw text is all there is.
    "empty": {"user": ("{{content}}",), "assistant": ("{{content}}",)},
}

# The tool prompt of LLaMA-Factory 0.8.2's "default" tool format (MindSpeed uses it for every
# template in TABLE). Filled by packft.tokenize.templates.format_tools.
TOOL_PROMPT: Final = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}]).\n"
    "Action Input: the input to the tool{format_prompt}.\n"
    "```\n"
)
TOOL_JSON_HINT: Final = (
    ', in a JSON format representing the kwargs (e.g. ```{"input": "hello world", '
    '"num_beams": 5}```)'
)
