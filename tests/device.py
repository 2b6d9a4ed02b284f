"""The device the parity tests run on: the CPU, or the one DECOUPLED_TEST_DEVICE names (``cuda``, ``cuda:1``).

benchmarks/gpu_check.py runs test_parity, test_kernel_paths, test_torch_equivalence and test_decouple with
DECOUPLED_TEST_DEVICE=cuda: the optimizers' tensors live on the GPU, the float64 references stay on the CPU.
"""

from __future__ import annotations

import os

import torch

TEST_DEVICE = torch.device(os.environ.get("DECOUPLED_TEST_DEVICE", "cpu"))
if TEST_DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError(f"DECOUPLED_TEST_DEVICE={TEST_DEVICE} but torch.cuda.is_available() is False")
