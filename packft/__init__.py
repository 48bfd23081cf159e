"""packft: packed SFT data, Megatron checkpoints and fine-tuning, drop-in for MindSpeed-LLM.

Importing packft sets ``TORCH_DEVICE_BACKEND_AUTOLOAD=0`` (a default: a value the user set wins)
before any module of it can import torch: with ``torch_npu`` installed on a host without CANN, a
plain ``import torch`` would otherwise raise while auto-loading the backend, and the trainer
imports torch before it reaches :mod:`packft.train.device`, which imports ``torch_npu`` itself
and treats a failure as "no NPU" (ecosystem.md section 3; tests/train/test_devices.py).
"""

import os
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("TORCH_DEVICE_BACKEND_AUTOLOAD", "0")

try:
    __version__ = version("packft")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
