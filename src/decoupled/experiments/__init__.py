"""The sweep toolkit behind ``decoupled sweep``: reproduce the paper's learning-rate x weight-decay findings, on
the built-in tasks or on your own model and data (:class:`Task`, :class:`LoopTask`; docs/your-model.md).

Modules, each depending only on those above it:

* :mod:`.config`: frozen configs, presets (``presets/*.toml``), strict checking;
* :mod:`.data`, :mod:`.augment`, :mod:`.models`: datasets, augmentation, networks;
* :mod:`.tasks`: what a run trains (yours or a built-in one), the toolkit's loop, :class:`Run`;
* :mod:`.train`: one run of a task; :mod:`.provenance`: where a run came from;
* :mod:`.store`: the SQLite store of finished runs; :mod:`.backends`: where runs execute;
* :mod:`.sweep`: plan, skip finished runs, execute, record; :mod:`.progress`: the live display;
* :mod:`.analysis`, :mod:`.plots`, :mod:`.report`: numbers, figures and the report.

The library (``decoupled``) never imports this package.
"""

from .tasks import Data, Diverged, LoopTask, Run, Task, TaskError, classification_error, load_task

__all__ = ["Data", "Diverged", "LoopTask", "Run", "Task", "TaskError", "classification_error", "load_task"]
