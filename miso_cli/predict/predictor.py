""":class:`SlicePredictor`: a job's MPS profile in, its relative step time per MIG slice out.

The learned part (a fitted model, or the shipped linear prior) gives the slice
sizes it was trained on (4g and 3g from the MISO pairs). Every other slice size
of the GPU, and every slice of a GPU model the learned part was not trained on,
comes from the physical model (:mod:`miso_cli.predict.physical`), fed with the
learned ratios, and carries the larger uncertainty measured for it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

from miso_cli.errors import BadInput
from miso_cli.gpu.profiles import MODELS, GpuModel
from miso_cli.policy.core import SlicePrediction
from miso_cli.predict.data import ProfileRow
from miso_cli.predict.estimators import SliceRatioModel
from miso_cli.predict.features import FeatureSpec, usable_profile
from miso_cli.predict.physical import Shares, decompose, ratio_on
from miso_cli.predict.prior import DEFAULT_PHYSICAL_SIGMA, LinearPrior, load_prior

Core = Union[LinearPrior, SliceRatioModel]  # noqa: UP007 - a runtime alias on Python 3.10
_CACHE_LIMIT = 1 << 16
TRANSFER_SIGMA = 0.05  # extra log-space error when carrying ratios to another GPU model


class SlicePredictor:
    """Predicts relative step times per compute-slice count from MPS profiles.

    ``source`` is ``"model"`` (fitted on this machine's data) or ``"prior"`` (the
    shipped one); a prediction's source is ``"physical"`` when it is for a GPU
    model the learned part was not trained on.
    """

    def __init__(
        self,
        core: Core,
        *,
        source: str,
        gpu_model_key: str,
        metadata: dict[str, Any] | None = None,
        physical_sigma: Mapping[int, float] | None = None,
    ) -> None:
        self.core = core
        self.source = source
        self.gpu_model_key = gpu_model_key
        self.metadata: dict[str, Any] = dict(metadata or {})
        self.metadata.setdefault("source", source)
        self.metadata.setdefault("gpu_model", gpu_model_key)
        if isinstance(core, LinearPrior):
            self.spec: FeatureSpec = core.spec
            self.sigma = dict(core.sigma)
            self.fallback = dict(core.fallback)
            self.fallback_sigma = dict(core.fallback_sigma)
            self.physical_sigma = dict(core.physical_sigma)
        else:
            self.spec = core.spec_
            self.sigma = dict(core.sigma_)
            self.fallback = dict(core.fallback_)
            self.fallback_sigma = dict(core.fallback_sigma_)
            self.physical_sigma = dict(DEFAULT_PHYSICAL_SIGMA)
        if physical_sigma:
            self.physical_sigma.update(physical_sigma)
        self.learned = tuple(sorted(self.sigma, reverse=True))
        self.metadata.setdefault("learned_slices", list(self.learned))
        self.trained_model: GpuModel | None = MODELS.get(gpu_model_key)
        # The GPU model predictions are for when a call names none.
        self.default_gpu: GpuModel | None = self.trained_model
        self._cache: dict[Any, SlicePrediction] = {}

    # -- the learned part ------------------------------------------------------------

    def _log_batch(self, X: Any) -> dict[int, Any]:
        return self.core.predict_log(X)

    def _log_one(self, x: list[float]) -> dict[int, float]:
        if isinstance(self.core, LinearPrior):
            return self.core.predict_log_one(x)
        import numpy as np

        return {g: float(v[0]) for g, v in self.core.predict_log(np.array([x])).items()}

    # -- assembling a prediction -----------------------------------------------------

    def _assemble(
        self,
        logs: Mapping[int, float] | None,
        gpu_model: GpuModel | None,
        memory_mb: float | None,
    ) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
        """Relative times, their std. dev. and their source, per slice size of the GPU."""
        target = gpu_model or self.default_gpu or MODELS["a100-40gb"]
        trained = self.trained_model or target
        base = self.source
        if logs is None:  # no usable profile: the training distribution's centre
            logs, sig = dict(self.fallback), dict(self.fallback_sigma)
            base = "prior"
        else:
            sig = dict(self.sigma)
        same_gpu = target.key == trained.key
        t_shares, s_shares = Shares.of(target), Shares.of(trained)
        learned = {g: math.exp(v) for g, v in logs.items()}
        c, m = decompose(learned, s_shares)
        spread = max(sig.values(), default=0.1)
        relative: dict[int, float] = {}
        sigma: dict[int, float] = {}
        source: dict[int, str] = {}
        for p in sorted(target.standard_profiles(), key=lambda p: -p.slices):
            g = p.slices
            if memory_mb is not None and memory_mb > p.memory_mb:
                continue  # the job does not fit this slice
            if g == t_shares.full:
                relative[g], sigma[g], source[g] = 1.0, 0.0, "measured"
            elif same_gpu and g in learned:
                relative[g], sigma[g], source[g] = learned[g], sig[g], base
            else:
                relative[g] = max(1.0, ratio_on(g, c, m, t_shares))
                phys = self.physical_sigma.get(g, max(self.physical_sigma.values(), default=0.1))
                extra = 0.0 if same_gpu else TRANSFER_SIGMA
                sigma[g] = math.sqrt(spread**2 + phys**2 + extra**2)
                source[g] = "physical"
        return relative, sigma, source

    def _to_prediction(
        self,
        relative: dict[int, float],
        sigma: dict[int, float],
        source: dict[int, str],
        base: str,
    ) -> SlicePrediction:
        learned = [s for s in source.values() if s not in ("measured", "physical")]
        overall = learned[0] if learned else ("physical" if source else base)
        return SlicePrediction(
            relative=relative,
            uncertainty={g: relative[g] * sigma[g] for g in relative},
            source=overall,
        )

    # -- public API ------------------------------------------------------------------

    def predict_one(
        self,
        mps: Mapping[int, float],
        *,
        jobs_in_mix: int = 1,
        mix: Sequence[Mapping[int, float]] | None = None,
        memory_mb: float | None = None,
        gpu_model: GpuModel | None = None,
    ) -> SlicePrediction:
        """One job's relative step time per slice size (cached: repeated calls are cheap).

        ``mix``: the co-runners' MPS profiles when the job was profiled beside them;
        ``jobs_in_mix`` defaults to them plus this job. A slice the job cannot fit
        (``memory_mb`` above the slice's memory) is left out.
        """
        co = tuple(tuple(sorted(c.items())) for c in (mix or ()))
        jobs = max(int(jobs_in_mix), len(co) + 1)
        key = (
            tuple(sorted(mps.items())),
            jobs,
            co,
            memory_mb,
            gpu_model.key if gpu_model is not None else None,
        )
        hit = self._cache.get(key)
        if hit is not None:
            return _copy(hit)
        logs = None
        if usable_profile(mps):
            x = self.spec.vector(mps, jobs, [dict(c) for c in co])
            logs = self._log_one(x)
        pred = self._to_prediction(*self._assemble(logs, gpu_model, memory_mb), self.source)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = pred
        return _copy(pred)

    def predict_many(
        self,
        jobs: Sequence[Mapping[str, Any]],
        *,
        gpu_model: GpuModel | None = None,
    ) -> list[SlicePrediction]:
        """Batch form of :meth:`predict_one`: each item has ``mps`` and optionally
        ``jobs_in_mix``, ``mix`` and ``memory_mb``. One model call for all of them."""
        import numpy as np

        rows: list[list[float]] = []
        where: list[int | None] = []
        for item in jobs:
            mps = item["mps"]
            co = [dict(c) for c in (item.get("mix") or ())]
            n = max(int(item.get("jobs_in_mix", 1)), len(co) + 1)
            if usable_profile(mps):
                where.append(len(rows))
                rows.append(self.spec.vector(mps, n, co))
            else:
                where.append(None)
        logs = self._log_batch(np.array(rows)) if rows else {}
        out = []
        for item, w in zip(jobs, where, strict=True):
            one = None if w is None else {g: float(v[w]) for g, v in logs.items()}
            out.append(
                self._to_prediction(
                    *self._assemble(one, gpu_model, item.get("memory_mb")), self.source
                )
            )
        return out

    def predict_rows(
        self, rows: Sequence[ProfileRow], *, gpu_model: GpuModel | None = None
    ) -> list[tuple[dict[int, float], dict[int, float], dict[int, str]]]:
        """Predictions for CSV rows, co-runners taken from rows of the same mix.

        Each item: (relative time, std. dev., source) per slice size.
        """
        for r in rows:
            if not usable_profile(r.mps):
                raise BadInput(f"{r.source}: needs mps_100 and at least one lower MPS level")
        X = self.spec.matrix(rows)
        logs = self._log_batch(X)
        return [
            self._assemble({g: float(v[i]) for g, v in logs.items()}, gpu_model, r.memory_mb)
            for i, r in enumerate(rows)
        ]


def _copy(p: SlicePrediction) -> SlicePrediction:
    """Callers may edit what they get; the cache keeps its own."""
    return SlicePrediction(dict(p.relative), dict(p.uncertainty), p.source)


def load_predictor(
    path: Path | None = None,
    gpu_model_key: str = "a100-40gb",
    state_dir: Path | None = None,
) -> SlicePredictor:
    """The predictor to use.

    ``path``: a saved model (``.joblib``) or a prior document (``.json``). ``None``:
    the model fitted in the state directory for ``gpu_model_key`` if there is one,
    else the shipped prior.
    """
    from miso_cli.predict.persist import default_model_path, load_model

    explicit = path is not None
    if path is None:
        from miso_cli.state import default_state_dir

        candidate = default_model_path(
            Path(state_dir) if state_dir else default_state_dir(), gpu_model_key
        )
        if candidate.exists():
            path = candidate
    if path is None:
        pred = _from_prior(load_prior(gpu_model_key))
    elif Path(path).suffix == ".json":
        pred = _from_prior(load_prior(path=Path(path)))
    else:
        model, meta = load_model(Path(path))
        meta = dict(meta)
        meta["path"] = str(path)
        pred = SlicePredictor(model, source="model", gpu_model_key=meta["gpu_model"], metadata=meta)
    if not explicit:  # predictions are for the GPU model asked about
        pred.default_gpu = MODELS.get(gpu_model_key.lower(), pred.default_gpu)
    return pred


def _from_prior(prior: LinearPrior) -> SlicePredictor:
    doc = prior.document
    meta = {
        "path": str(prior.path) if prior.path else None,
        "format": doc.get("format"),
        "provenance": doc.get("provenance", {}),
        "features": doc.get("features", {}),
        "cv": {k: {"cv": t.get("cv"), "mape": t.get("cv_mape")} for k, t in doc["targets"].items()},
    }
    return SlicePredictor(prior, source="prior", gpu_model_key=prior.gpu_model_key, metadata=meta)
