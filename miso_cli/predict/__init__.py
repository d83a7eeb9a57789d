"""The predictor: from a job's MPS profile to its step time on every MIG slice.

Public API::

    from miso_cli.predict import load_predictor, SlicePredictor
    pred = load_predictor()            # this machine's fitted model, else the shipped prior
    pred.predict_one({100: 30.0, 50: 39.0, 14: 95.0}, jobs_in_mix=1, memory_mb=8000)

Importing this package is cheap: scikit-learn and numpy load only when a model
is fitted or a batch predicted.
"""

from __future__ import annotations

from miso_cli.predict.predictor import SlicePredictor, load_predictor

__all__ = ["SlicePredictor", "load_predictor"]
