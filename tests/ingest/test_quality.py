"""The quality gate: the one decision shared by ``packft preprocess`` and the pack-dataset flow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from packft.ingest.quality import InputCounts, QualityGateError, check_quality


def test_passes_at_and_above_the_threshold() -> None:
    result = check_quality([InputCounts("a.json", 10, 5, {"empty_answer": 5})], 0.5)
    assert (result.total, result.valid, result.valid_fraction) == (10, 5, 0.5)
    summaries = [{"file": "a", "total": 4, "valid": 4}, {"file": "b", "samples_in": 6, "valid": 1,
                 "rejected": {"too_large": 5}}]  # fmt: skip
    assert check_quality(summaries, 0.5).rejected == {"too_large": 5}  # 5 of 10 over both files


def test_too_few_valid_names_counts_top_reasons_example_and_rejects_file(tmp_path: Path) -> None:
    rejects = tmp_path / "r.jsonl"
    message = "d.jsonl:0: invalid_json: invalid JSON: Expecting value"
    rejects.write_text(json.dumps({"message": message, "record": "x"}) + "\n")
    counts = InputCounts("d.jsonl", 1000, 2, {"invalid_json": 990, "not_a_dict": 6,
                         "too_large": 1, "too_deep": 1}, str(rejects))  # fmt: skip
    with pytest.raises(QualityGateError) as info:
        check_quality([counts], 0.5)
    text = str(info.value)
    assert "only 2 of 1,000 records are valid (0.2% < --min-valid-fraction 0.5)" in text
    assert "rejected: invalid_json 990, not_a_dict 6, too_deep 1 (+1 more reasons)" in text
    assert f"e.g. {message}" in text and f"all rejects: {rejects}" in text
    assert "nothing was written" in text and "\n" not in text
    assert info.value.exit_code == 1
    assert check_quality([counts], 0.0).valid == 2  # 0 disables the fraction rule ...


def test_zero_valid_or_no_records_always_fail() -> None:
    with pytest.raises(QualityGateError, match="none of 3 records is valid"):
        check_quality([InputCounts("x.parquet", 3, 0, {"wrong_type": 3})], 0.0)  # ... not this
    with pytest.raises(QualityGateError, match=r"no records in e\.json, f\.json \(empty file\?\)"):
        check_quality([InputCounts("e.json", 0, 0), InputCounts("f.json", 0, 0)], 0.0)
