"""The predictor: from a job's MPS profile to its step time on every MIG slice.

Public API::

    from miso_cli.predict import load_predictor, SlicePredictor
    pred = load_predictor()            # this machine's fitted model, else the shipped prior
    pred.predict_one({100: 30.0, 50: 39.0, 14: 95.0}, jobs_in_mix=1, memory_mb=8000)

Importing this package is cheap: scikit-learn and numpy load only when a model
is fitted or a batch predicted.
"""

from __future__ import annotations

from typing import Any

from miso_cli.predict.predictor import SlicePredictor, load_predictor

__all__ = ["SlicePredictor", "load_predictor", "predictor_line"]


def predictor_line(metadata: dict[str, Any] | None) -> str:
    """The line every predicting command prints on stderr: which model predicts, and why.

    ``metadata``: a predictor's ``metadata`` (what ``simulator.make_predict`` returns
    beside the callable); its ``model_used`` and ``description`` are the JSON fields.
    """
    meta = metadata or {}
    text = meta.get("description") or f"{meta.get('source', 'unknown')} model"
    return f"predictor: {text}"
