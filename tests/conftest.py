"""Shared fixtures: the real public assets committed in tests/assets (see its MANIFEST.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "tests" / "assets"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the test assets are committed under tests/assets "
            "(see tests/assets/MANIFEST.md); is the checkout complete?"
        )
    return path


@pytest.fixture(scope="session")
def assets_dir() -> Path:
    return _require(ASSETS_DIR)


@pytest.fixture(scope="session")
def reference_dir(assets_dir: Path) -> Path:
    return _require(assets_dir / "reference")


@pytest.fixture(scope="session")
def llama2_tokenizer_dir(assets_dir: Path) -> Path:
    return _require(assets_dir / "llama2-tokenizer")


@pytest.fixture(scope="session")
def qwen_tokenizer_dir(assets_dir: Path) -> Path:
    return _require(assets_dir / "qwen2.5-tokenizer")


@pytest.fixture(scope="session")
def alpaca_en_path(assets_dir: Path) -> Path:
    return _require(assets_dir / "alpaca" / "llamafactory_alpaca_en_demo.json")


@pytest.fixture(scope="session")
def alpaca_zh_path(assets_dir: Path) -> Path:
    return _require(assets_dir / "alpaca" / "llamafactory_alpaca_zh_demo.json")


@pytest.fixture(scope="session")
def sharegpt_toolcall_path(assets_dir: Path) -> Path:
    return _require(assets_dir / "sharegpt" / "llamafactory_glaive_toolcall_en_demo.json")


@pytest.fixture(scope="session")
def sharegpt_system_path(assets_dir: Path) -> Path:
    return _require(assets_dir / "sharegpt" / "fastchat_dummy_conversation_with_system.json")


@pytest.fixture(scope="session")
def openai_messages_path(assets_dir: Path) -> Path:
    return _require(assets_dir / "messages" / "openai_cookbook_toy_chat_fine_tuning.jsonl")
