"""The examples in the library's docstrings run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

LIBRARY_MODULES = [
    "decoupled.conventions",
    "decoupled.optimizers",
    "decoupled.schedules",
    "decoupled.groups",
    "decoupled.kernels",
    "decoupled.precision",
]


@pytest.mark.parametrize("name", LIBRARY_MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0
