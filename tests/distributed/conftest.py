"""The spawned ranks import dist_harness by name: put this folder on sys.path (spawn hands sys.path to them)."""

import sys
from pathlib import Path

import pytest
import torch.distributed as dist

if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

if not dist.is_available():  # pragma: no cover (torch builds without distributed)
    pytest.skip("torch.distributed is not available in this torch build", allow_module_level=True)
