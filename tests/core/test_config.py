"""The pydantic -> argparse/YAML bridge that makes CLI flags, YAML files and flow parameters one config."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, Field, field_validator

from packft.cli import main
from packft.core.config import add_model_arguments, load_config, model_from_args
from packft.core.errors import ConfigError


class Example(BaseModel):
    input: list[str] = Field(description="input files")
    seq_length: int = Field(4096, description="row length")
    pack: bool = Field(False, description="pack rows")
    overlong: Literal["truncate", "drop"] = Field("truncate", description="what to do")
    map_keys: dict[str, str] | None = Field(None, description="key mapping")

    @field_validator("seq_length")
    @classmethod
    def positive(cls, value: int) -> int:
        if value < 2:
            raise ValueError("must be at least 2")
        return value


def _parse(argv: list[str]) -> Example:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_model_arguments(parser, Example)
    return model_from_args(Example, parser.parse_args(argv))


def test_flags_map_to_fields() -> None:
    cfg = _parse(
        [
            "--input",
            "a.json",
            "b.json",
            "--seq-length",
            "512",
            "--pack",
            "--overlong",
            "drop",
            "--map-keys",
            '{"prompt": "instruction"}',
        ]
    )
    assert cfg == Example(
        input=["a.json", "b.json"],
        seq_length=512,
        pack=True,
        overlong="drop",
        map_keys={"prompt": "instruction"},
    )


def test_defaults_come_from_the_model() -> None:
    cfg = _parse(["--input", "x"])
    assert (cfg.seq_length, cfg.pack, cfg.overlong, cfg.map_keys) == (4096, False, "truncate", None)


def test_yaml_then_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("input: [y.json]\nseq-length: 1024\npack: true\n")
    cfg = _parse(["--config", str(path), "--no-pack"])
    assert (cfg.input, cfg.seq_length, cfg.pack) == (["y.json"], 1024, False)
    assert load_config(Example, path).pack is True


def test_all_problems_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Example, None, seq_length=1, overlong="nope")
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "--input" in message and "--seq-length" in message and "--overlong" in message


def test_bad_choice_is_an_argparse_error(capsys) -> None:
    with pytest.raises(SystemExit):
        _parse(["--input", "x", "--overlong", "split"])
    assert "invalid choice" in capsys.readouterr().err


def test_cli_without_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "preprocess" in capsys.readouterr().out
