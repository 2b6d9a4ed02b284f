"""The spawned ranks import dist_harness by name, and dist_harness imports tests/cases.py: put this folder and
tests/ on sys.path (spawn hands sys.path to them)."""

import sys
from pathlib import Path

import pytest
import torch.distributed as dist

for _folder in (Path(__file__).parent.parent, Path(__file__).parent):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

if not dist.is_available():  # pragma: no cover (torch builds without distributed)
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)
