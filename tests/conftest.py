"""Shared fixtures: the real public assets committed in tests/assets (see its MANIFEST.md), and
a guard that fails the test which leaves temporary files or run stores in the checkout."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS_DIR = REPO_ROOT / "tests" / "assets"


LEAK = re.compile(r"^(tmp[a-z0-9_]{8}|\.?tmp.*|mlruns|mlartifacts|\.packft)$")
"""What a test must not leave in the checkout: ``tempfile`` names, MLflow's ./mlruns, the data dir."""


@pytest.fixture(autouse=True)
def _no_leftovers_in_the_checkout(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test that leaves a temporary directory (e.g. ``tmp8siqrr1x/``) or a store in the
    repository root: temporaries belong in ``tmp_path``."""
    before = set(os.listdir(REPO_ROOT))
    yield
    new = sorted(n for n in set(os.listdir(REPO_ROOT)) - before if LEAK.match(n))
    if new:
        pytest.fail(f"{request.node.nodeid} left {new} in {REPO_ROOT}; write under tmp_path")


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
