"""The one set of convert-ckpt options: ``packft convert-ckpt`` builds it from its flags, the
``finetune``/``pipeline`` flows read it from YAML, and :func:`packft.ckpt.convert.convert` runs it.

Pydantic only (no torch), so configs that embed it stay cheap to import. ``overwrite`` defaults to
False everywhere: an existing ``save_dir`` is refused unless the caller says to replace it (the
flows' YAML files say so for the intermediate checkpoint they own).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

DIRECTIONS = {("hf", "mg"), ("mg", "hf")}


class ConvertConfig(BaseModel):
    """``packft convert-ckpt`` flags (MindSpeed ``convert_ckpt_v2.py`` names)."""

    model_config = ConfigDict(extra="forbid")

    load_model_type: Literal["hf", "mg"] = "hf"
    save_model_type: Literal["mg", "hf"] = "mg"
    load_dir: str = Field(description="checkpoint to read")
    save_dir: str = Field(description="directory to create")
    model_type_hf: str | None = Field(
        None, description="architecture; detected from config.json when omitted"
    )
    target_tensor_parallel_size: int = Field(1, ge=1)
    target_pipeline_parallel_size: int = Field(1, ge=1)
    num_layer_list: str | None = Field(
        None, description="layers per pipeline stage for uneven splits, e.g. 3,5"
    )
    hf_cfg_dir: str | None = Field(
        None, description="mg->hf: HF directory whose config/tokenizer files are copied"
    )
    params_dtype: Literal["fp32", "bf16", "fp16"] | None = Field(
        None, description="cast weights (default: keep the checkpoint's dtype)"
    )
    overwrite: bool = Field(False, description="replace an existing save_dir")

    @model_validator(mode="after")
    def _direction(self) -> ConvertConfig:
        if (self.load_model_type, self.save_model_type) not in DIRECTIONS:
            raise ValueError(
                f"--load-model-type {self.load_model_type} --save-model-type "
                f"{self.save_model_type} is not supported; use hf->mg or mg->hf"
            )
        return self
