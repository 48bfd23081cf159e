"""The state shared by the step loop (:mod:`packft.train.loop`) and the checkpoints
(:mod:`packft.train.checkpoint`): the distributed environment and the trained parts.

Both sides import it (never each other's loop), which keeps the trainer's modules acyclic.
torch is named only in annotations, so importing this module does not load it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class DistEnv:
    """Where this process trains: its rank, the world size, its device and whether bf16 is on."""

    rank: int
    world: int
    device: torch.device
    bf16: bool

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class Parts:
    """What the step loop updates and a checkpoint saves and restores."""

    model: torch.nn.Module  # wrapped (DDP/FSDP2) for training
    core: torch.nn.Module  # the transformers model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    dataset: Any
    sampler: Any
    step: int
    valid: Any = None  # held-out rows (packft.train.split), None without validation
