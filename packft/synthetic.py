"""The embedded default dataset and tokenizer, so ``make demo`` and tests need no downloads.

:func:`make_demo_data` writes ``alpaca.json`` (a JSON list, one record per line) and
``sharegpt.jsonl`` from a seeded ``numpy`` Generator: same arguments, same bytes. Text is drawn
from a fixed ~250-word vocabulary (with a few non-ASCII words) in sentences and paragraphs.
Lengths are lognormal (answer median ~60 words, sigma 0.85) with a long tail, and every file also
holds three forced long samples (700-900 words, > 512 tokens with the demo tokenizer) so that
overlong handling at ``--seq-length 512`` is always exercised. About 10% of Alpaca rows carry a
``system`` field and 5% a ``history``; ShareGPT rows have 1-4 exchanges, 30% have a system prompt
(half as a ``system`` field, half as a leading system message), and 5% are tool-use
conversations with ``tools`` and function_call/observation turns.

Deliberately invalid records (exactly these; see :func:`expected_rejects`) replace the rows at
10%, 50% and 90% of each file (and 70% for the broken JSON line):

=============== ======= ======================================================================
file            reason  record
=============== ======= ======================================================================
alpaca.json     10%     ``empty_answer``: ``output`` is ""
alpaca.json     50%     ``wrong_type``: ``output`` is a number
alpaca.json     90%     ``missing_field``: no ``output`` key
sharegpt.jsonl  10%     ``roles_not_alternating``: two human turns in a row
sharegpt.jsonl  50%     ``wrong_last_role``: ends on a human turn
sharegpt.jsonl  70%     ``invalid_json``: a truncated JSON line
sharegpt.jsonl  90%     ``unknown_role``: a turn from "bot"
=============== ======= ======================================================================

:func:`train_demo_tokenizer` trains a byte-level BPE (HF ``tokenizers``) on those files and saves
an HF tokenizer folder (``tokenizer.json``, ``tokenizer_config.json`` with ``<s>``/``</s>``/
``<pad>``/``<unk>`` and a chat template marking assistant text with ``{% generation %}``).
Measured: data for the default 3000+1000 samples ~0.3 s, tokenizer training ~1-2 s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from packft.core.atomic import Stage

_WORD_TEXT = (
    "the a an of to and in on for with as by at from about into over after before under between "
    "model data token sequence batch layer weight gradient loss training learning attention "
    "memory cache shard file format record sample packing row column index offset length "
    "system user assistant question answer reason result value table chart graph list set map "
    "river mountain forest ocean city village garden kitchen library market school museum "
    "bread coffee apple rice soup salad cheese pepper garlic butter honey lemon tomato onion "
    "red green blue yellow bright dark quiet loud warm cold fast slow large small simple clear "
    "write read explain describe compare list summarize translate classify count sort find "
    "build measure improve check run test plan design choose start finish open close keep "
    "because although while when where which that this these those every each some many few "
    "people friend teacher student doctor engineer artist farmer writer player driver "
    "morning evening night summer winter spring autumn today yesterday tomorrow always never "
    "is are was were be been has have had do does did can could should would will may might "
    "good better best new old young long short high low early late first last next other "
    "story poem letter email report essay recipe guide review plan note summary idea example "
    "one two three four five six seven eight nine ten hundred thousand million percent "
    "café naïve résumé 数据 模型 训练 你好 東京 straße"
)
_WORDS = tuple(_WORD_TEXT.split())
_TOPICS = (
    "renewable energy",
    "the water cycle",
    "packing sequences for training",
    "a rainy afternoon",
    "healthy breakfast ideas",
    "the history of printing",
    "learning a new language",
    "how memory caches work",
    "a trip to the mountains",
    "team communication",
)
_INSTRUCTIONS = (
    "Explain {topic} in simple terms.",
    "Write a short story about {topic}.",
    "List {n} facts about {topic}.",
    "Summarize the following text.",
    "Translate the following sentence into French.",
    "Give {n} tips for {topic}.",
    "Classify the following item.",
    "Write a poem about {topic}.",
    "Describe {topic} to a child.",
    "Compare the two options below.",
)
_SYSTEMS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer in a few sentences.",
    "You are a patient teacher who explains every step.",
)
_TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "city name"}},
            "required": ["city"],
        },
    }
]
_CITIES = ("Paris", "Lima", "Oslo", "Cairo", "Tokyo", "Perth")
_LONG = (700, 900)  # words in a forced overlong sample
_MIN_ROWS = 20


def _fractions(n: int, fractions: Iterable[float]) -> list[int]:
    return [int(n * f) for f in fractions]


def expected_rejects(n_alpaca: int = 3000, n_sharegpt: int = 1000) -> dict[str, dict[int, str]]:
    """File name -> {row: reason} of the deliberately invalid demo records."""
    a = _fractions(n_alpaca, (0.1, 0.5, 0.9))
    s = _fractions(n_sharegpt, (0.1, 0.5, 0.7, 0.9))
    return {
        "alpaca.json": dict(zip(a, ("empty_answer", "wrong_type", "missing_field"), strict=True)),
        "sharegpt.jsonl": dict(
            zip(
                s,
                ("roles_not_alternating", "wrong_last_role", "invalid_json", "unknown_role"),
                strict=True,
            )
        ),
    }


class _Text:
    """Seeded word-salad generator with sentence and paragraph structure."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.words = np.array(_WORDS, dtype=object)

    def words_count(self, median: float, sigma: float = 0.85, cap: int = 1500) -> int:
        return int(min(cap, max(1, round(self.rng.lognormal(np.log(median), sigma)))))

    def text(self, n_words: int) -> str:
        picks = self.words[self.rng.integers(0, len(self.words), size=n_words)]
        out: list[str] = []
        sentence: list[str] = []
        sentence_len = int(self.rng.integers(5, 16))
        for word in picks:
            sentence.append(word)
            if len(sentence) == sentence_len:
                out.append(" ".join(sentence).capitalize() + ".")
                if self.rng.random() < 0.15:
                    out.append("\n\n")
                sentence, sentence_len = [], int(self.rng.integers(5, 16))
        if sentence:
            out.append(" ".join(sentence).capitalize() + ".")
        return " ".join(out).replace(" \n\n ", "\n\n").strip()

    def choice(self, options: tuple[str, ...]) -> str:
        return options[int(self.rng.integers(0, len(options)))]


def _alpaca_rows(gen: _Text, n: int) -> list[dict[str, Any]]:
    long_rows = set(_fractions(n, (0.25, 0.6, 0.95)))
    rows = []
    for i in range(n):
        template = gen.choice(_INSTRUCTIONS)
        instruction = template.format(topic=gen.choice(_TOPICS), n=int(gen.rng.integers(2, 8)))
        needs_input = "following" in template or "below" in template
        has_input = needs_input or gen.rng.random() < 0.2
        answer_words = int(gen.rng.integers(*_LONG)) if i in long_rows else gen.words_count(60)
        row: dict[str, Any] = {
            "instruction": instruction,
            "input": gen.text(gen.words_count(25)) if has_input else "",
            "output": gen.text(answer_words),
        }
        if gen.rng.random() < 0.10:
            row["system"] = gen.choice(_SYSTEMS)
        if gen.rng.random() < 0.05:
            row["history"] = [
                [gen.text(gen.words_count(12)), gen.text(gen.words_count(40))]
                for _ in range(int(gen.rng.integers(1, 3)))
            ]
        rows.append(row)
    bad = expected_rejects(n, _MIN_ROWS)["alpaca.json"]
    for row_index, reason in bad.items():
        row = rows[row_index]
        if reason == "empty_answer":
            row["output"] = ""
        elif reason == "wrong_type":
            row["output"] = 42
        else:
            del row["output"]
    return rows


def _tool_conversation(gen: _Text) -> list[dict[str, str]]:
    city = gen.choice(_CITIES)
    temperature = int(gen.rng.integers(-5, 35))
    return [
        {"from": "human", "value": f"What is the weather in {city} today?"},
        {
            "from": "function_call",
            "value": json.dumps({"name": "get_weather", "arguments": {"city": city}}),
        },
        {"from": "observation", "value": json.dumps({"city": city, "celsius": temperature})},
        {"from": "gpt", "value": f"It is {temperature} degrees in {city}. " + gen.text(12)},
    ]


def _sharegpt_lines(gen: _Text, n: int) -> list[str]:
    long_rows = set(_fractions(n, (0.3, 0.65, 0.97)))
    bad = expected_rejects(_MIN_ROWS, n)["sharegpt.jsonl"]
    lines = []
    for i in range(n):
        record: dict[str, Any] = {"id": f"demo_{i}"}
        if gen.rng.random() < 0.05 and i not in long_rows:
            turns = _tool_conversation(gen)
            record["tools"] = json.dumps(_TOOLS)
        else:
            turns = []
            for _ in range(int(min(4, gen.rng.geometric(0.55)))):
                answer = int(gen.rng.integers(*_LONG)) if i in long_rows else gen.words_count(50)
                turns.append({"from": "human", "value": gen.text(gen.words_count(18))})
                turns.append({"from": "gpt", "value": gen.text(answer)})
        draw = gen.rng.random()
        if draw < 0.15:
            record["system"] = gen.choice(_SYSTEMS)
        elif draw < 0.30:
            turns.insert(0, {"from": "system", "value": gen.choice(_SYSTEMS)})
        reason = bad.get(i)
        if reason == "roles_not_alternating":
            turns.insert(len(turns) - 1, {"from": "human", "value": "and one more thing"})
        elif reason == "wrong_last_role":
            turns.append({"from": "human", "value": "thanks, anything else?"})
        elif reason == "unknown_role":
            turns[-1]["from"] = "bot"
        record["conversations"] = turns
        line = json.dumps(record, ensure_ascii=False)
        lines.append(line[: len(line) // 2] if reason == "invalid_json" else line)
    return lines


def make_demo_data(
    out_dir: Path, n_alpaca: int = 3000, n_sharegpt: int = 1000, seed: int = 0
) -> list[Path]:
    """Write the deterministic demo set; returns ``[alpaca.json, sharegpt.jsonl]``.

    Raises:
        ValueError: fewer than 20 rows requested per file (the invalid rows need room).
    """
    if min(n_alpaca, n_sharegpt) < _MIN_ROWS:
        raise ValueError(f"n_alpaca and n_sharegpt must be >= {_MIN_ROWS}")
    out_dir = Path(out_dir)
    gen = _Text(np.random.default_rng(seed))
    alpaca = _alpaca_rows(gen, n_alpaca)
    alpaca_text = "[\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in alpaca) + "\n]\n"
    sharegpt_text = "\n".join(_sharegpt_lines(gen, n_sharegpt)) + "\n"
    paths = [out_dir / "alpaca.json", out_dir / "sharegpt.jsonl"]
    _write_together(out_dir, dict(zip(paths, (alpaca_text, sharegpt_text), strict=True)))
    return paths


def _write_together(out_dir: Path, texts: dict[Path, str], marker: Path | None = None) -> None:
    """Commit UTF-8 files in one :class:`~packft.core.atomic.Stage` (``marker`` renamed last, so
    its presence means every file is in place)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with Stage(out_dir, label="synthetic") as stage:
        for path, text in texts.items():
            stage.open(path).write(text.encode("utf-8"))
            stage.seal(path)
        stage.commit(marker=marker)


# ---------------------------------------------------------------------------- tokenizer

CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- bos_token + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{{- '\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- bos_token + 'assistant\\n' -}}{%- endif -%}"
)
SPECIAL_TOKENS = {
    "unk_token": "<unk>",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "pad_token": "<pad>",
}


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _corpus(paths: Iterable[Path]) -> Iterator[str]:
    from packft.ingest.readers import iter_record_batches

    for path in paths:
        for batch in iter_record_batches(Path(path)):
            for row in batch.rows:
                yield from _strings(row)


def train_demo_tokenizer(data_paths: Iterable[Path], out_dir: Path, vocab_size: int = 4096) -> Path:
    """Train a byte-level BPE on every string in ``data_paths``; save it as an HF tokenizer folder.

    The result is deterministic for the same data (byte-identical files) and loads with
    ``transformers.AutoTokenizer.from_pretrained(out_dir)``.

    Returns:
        ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(data_paths), trainer=trainer)
    out_dir = Path(out_dir)
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **SPECIAL_TOKENS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000,
        "chat_template": CHAT_TEMPLATE,
    }
    files = {
        "tokenizer.json": tokenizer.to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, ensure_ascii=False),
        "special_tokens_map.json": json.dumps(SPECIAL_TOKENS, indent=2),
    }
    texts = {out_dir / name: text + "\n" for name, text in files.items()}
    _write_together(out_dir, texts, marker=out_dir / "tokenizer.json")  # what callers look for
    return out_dir
