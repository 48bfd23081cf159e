"""The canonical conversation record every input format is normalised to.

Alpaca, ShareGPT and OpenAI ``messages`` rows all become a :class:`Conversation`: an optional
system prompt and tool schema, then turns that alternate between the prompt side (``user`` or
``observation``) and the answer side (``assistant`` or ``function``), ending on the answer side.
Roles follow LLaMA-Factory/MindSpeed-LLM's ``Role`` names so templates map one to one.

Example (Alpaca ``{"instruction": "Add", "input": "1+1", "output": "2"}``)::

    Conversation(messages=[Message("user", "Add\\n1+1"), Message("assistant", "2")],
                 source="data.json", row=0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["user", "assistant", "function", "observation"]
PROMPT_ROLES: frozenset[str] = frozenset({"user", "observation"})
ANSWER_ROLES: frozenset[str] = frozenset({"assistant", "function"})


@dataclass(frozen=True, slots=True)
class Message:
    """One turn: who speaks and what they say."""

    role: Role
    content: str


@dataclass(slots=True)
class Conversation:
    """A validated sample: prompt/answer turns plus where it came from (for rejects and audits)."""

    messages: list[Message]
    system: str = ""
    tools: str = ""
    source: str = ""
    row: int = -1
    meta: dict[str, object] = field(default_factory=dict)

    def pairs(self) -> list[tuple[Message, Message]]:
        """(prompt, answer) pairs in order; valid conversations always have an even length."""
        return [
            (self.messages[i], self.messages[i + 1]) for i in range(0, len(self.messages) - 1, 2)
        ]
