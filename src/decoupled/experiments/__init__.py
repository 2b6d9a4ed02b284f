"""The sweep toolkit behind ``decoupled sweep``: reproduce the paper's learning-rate x weight-decay findings.

Modules, each depending only on those above it:

* :mod:`.config`: frozen configs, presets (``presets/*.toml``), strict checking;
* :mod:`.data`, :mod:`.augment`, :mod:`.models`: datasets, augmentation, networks;
* :mod:`.train`: one run; :mod:`.provenance`: where a run came from;
* :mod:`.store`: the SQLite store of finished runs; :mod:`.backends`: where runs execute;
* :mod:`.sweep`: plan, skip finished runs, execute, record; :mod:`.progress`: the live display;
* :mod:`.analysis`, :mod:`.plots`, :mod:`.report`: numbers, figures and the report.

The library (``decoupled``) never imports this package.
"""
