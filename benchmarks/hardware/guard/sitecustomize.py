"""Make pynvml refuse every call that would change a GPU, for read-only checks on a lent GPU.

Put this folder first on PYTHONPATH. Every ``nvml*Set*``, ``*Reset*``, ``*Create*``,
``*Destroy*``, ``*Clear*`` call then raises NVML_ERROR_NO_PERMISSION instead of
reaching the driver, so a miso bug cannot change MIG mode, a layout or a clock.
Any other sitecustomize further down the path still runs.
"""

from __future__ import annotations

import importlib.util
import os
import sys

try:
    import pynvml

    _WORDS = ("Set", "Reset", "Create", "Destroy", "Clear", "Modify", "Register", "Unregister")

    def _make_guard(name: str):
        def guard(*_a: object, **_k: object) -> None:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

        guard.miso_guard = True  # type: ignore[attr-defined]
        guard.__name__ = name
        return guard

    for _name in dir(pynvml):
        if _name.startswith("nvml") and any(w in _name for w in _WORDS):
            if callable(getattr(pynvml, _name)) and not _name.startswith("nvmlEvent"):
                setattr(pynvml, _name, _make_guard(_name))
except ImportError:
    pass

# Run the sitecustomize this one shadows, if any.
_here = os.path.dirname(os.path.abspath(__file__))
for _p in sys.path:
    if not _p or os.path.abspath(_p) == _here:
        continue
    _f = os.path.join(_p, "sitecustomize.py")
    if os.path.isfile(_f):
        _spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", _f)
        if _spec and _spec.loader:
            _spec.loader.exec_module(importlib.util.module_from_spec(_spec))
        break
