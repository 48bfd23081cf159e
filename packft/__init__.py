"""packft: packed SFT data, Megatron checkpoints and fine-tuning, drop-in for MindSpeed-LLM."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("packft")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
