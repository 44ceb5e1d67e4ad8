"""Shared test settings: one thread (tiny tensors are faster so, and runs are repeatable), seeded RNG."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)

CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="needs CUDA"))]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
