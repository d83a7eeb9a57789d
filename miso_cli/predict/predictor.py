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
        pred = self._to_prediction(
            *self.detail_one(mps, jobs, [dict(c) for c in co], memory_mb, gpu_model), self.source
        )
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = pred
        return _copy(pred)

    def detail_one(
        self,
        mps: Mapping[int, float],
        jobs_in_mix: int,
        mix: Sequence[Mapping[int, float]],
        memory_mb: float | None,
        gpu_model: GpuModel | None,
    ) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
        """Relative time, log-space std. dev. and source per slice size (not cached)."""
        logs = None
        if usable_profile(mps):
            logs = self._log_one(self.spec.vector(mps, jobs_in_mix, list(mix)))
        return self._assemble(logs, gpu_model, memory_mb)

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

    ``path``: a saved model (``.joblib``) or a prior document (``.json``), used as
    given. ``None``: the model fitted in the state directory for ``gpu_model_key``
    when its fit showed it better than the shipped prior by the held-out measure
    of :mod:`miso_cli.predict.selection` (or the blend of the two, when that was
    better), else the shipped prior. ``metadata["model_used"]`` says which
    (``fitted``, ``prior`` or ``blend``) and ``metadata["description"]`` says it in
    words, with the figures.
    """
    from miso_cli.predict.persist import default_model_path, load_model

    explicit = path is not None
    kept_aside: dict[str, Any] | None = None
    if path is None:
        from miso_cli.runtime.state import default_state_dir

        candidate = default_model_path(
            Path(state_dir) if state_dir else default_state_dir(), gpu_model_key
        )
        if candidate.exists():
            path = candidate
    if path is None:
        pred = prior_predictor(gpu_model_key)
    elif Path(path).suffix == ".json":
        pred = _from_prior(load_prior(path=Path(path)))
    else:
        model, meta = load_model(Path(path))
        meta = dict(meta)
        meta["path"] = str(path)
        pred = SlicePredictor(model, source="model", gpu_model_key=meta["gpu_model"], metadata=meta)
        sel = meta.get("selection") or {}
        chosen = sel.get("chosen")
        if not explicit and chosen == "prior":
            kept_aside = meta
            pred = prior_predictor(gpu_model_key)
            pred.metadata["selection"] = sel
            pred.metadata["kept_aside"] = str(path)
        elif not explicit and chosen == "blend":
            pred = BlendedPredictor(prior_predictor(meta["gpu_model"]), pred, selection=sel)
    if not explicit:  # predictions are for the GPU model asked about
        pred.default_gpu = MODELS.get(gpu_model_key.lower(), pred.default_gpu)
    pred.metadata["model_used"] = _used(pred)
    pred.metadata["description"] = describe(pred, gpu_model_key, kept_aside=kept_aside)
    return pred


def prior_predictor(gpu_model_key: str) -> SlicePredictor:
    """The shipped prior for ``gpu_model_key`` (the A100-40GB one, carried over, if none)."""
    pred = _from_prior(load_prior(gpu_model_key))
    if pred.gpu_model_key != gpu_model_key.lower():
        pred.metadata["transferred_to"] = gpu_model_key.lower()
    return pred


def _used(pred: SlicePredictor) -> str:
    if isinstance(pred, BlendedPredictor):
        return "blend"
    return "fitted" if pred.source == "model" else "prior"


def _pct(sel: dict[str, Any], which: str) -> str:
    m = (sel.get("mape") or {}).get(which)
    return f"{m['mean']:.1%}" if m else "n/a"


def describe(
    pred: SlicePredictor, gpu_model_key: str, *, kept_aside: dict[str, Any] | None = None
) -> str:
    """One line saying which model predicts, and why (for stderr and ``--json``)."""
    meta = pred.metadata
    asked = gpu_model_key.lower()
    sel = meta.get("selection") or {}
    used = _used(pred)
    if used == "fitted":
        where = meta.get("path") or "a fitted model"
        text = f"the model fitted on this machine ({where})"
        if sel:
            text += f"; held-out error {_pct(sel, 'fitted')} vs {_pct(sel, 'prior')} for the prior"
        elif meta.get("format") == "miso-slice-model/1":
            text += "; not compared with the prior (fitted before miso compared models)"
    elif used == "blend":
        text = (
            f"the shipped prior blended with the model fitted on this machine "
            f"({meta.get('path')}); held-out error {_pct(sel, 'blend')} vs "
            f"{_pct(sel, 'prior')} prior, {_pct(sel, 'fitted')} fitted"
        )
    else:
        text = f"the shipped {pred.gpu_model_key} prior"
        if pred.gpu_model_key != asked:
            text += (
                f", carried over to {asked} by the physical model (SM and memory shares): "
                f"no prior or model was fitted on a {asked} (miso calibrate fits one)"
            )
        if kept_aside is not None:
            text += (
                f"; the model fitted here ({meta.get('kept_aside')}) is kept aside: "
                f"held-out error {_pct(sel, 'fitted')} vs {_pct(sel, 'prior')} for the prior"
            )
    if pred.trained_model is not None and asked != pred.gpu_model_key and used != "prior":
        text += f"; carried over from {pred.gpu_model_key} to {asked} by the physical model"
    return text


class BlendedPredictor(SlicePredictor):
    """The geometric mean of two predictors' relative step times (prior and fitted).

    Each slice's uncertainty is the blend's held-out error where it was measured,
    else the larger of the two predictors'.
    """

    def __init__(
        self, prior: SlicePredictor, fitted: SlicePredictor, *, selection: dict[str, Any]
    ) -> None:
        meta = dict(fitted.metadata)
        meta["source"] = "blend"
        meta["selection"] = selection
        meta["prior"] = prior.metadata.get("path")
        super().__init__(
            fitted.core, source="blend", gpu_model_key=fitted.gpu_model_key, metadata=meta
        )
        self.prior, self.fitted = prior, fitted
        self.blend_sigma = {
            int(k.removeprefix("mig_").removesuffix("g")): float(v)
            for k, v in (selection.get("sigma_log") or {}).items()
        }

    def _combine(
        self,
        a: tuple[dict[int, float], dict[int, float], dict[int, str]],
        b: tuple[dict[int, float], dict[int, float], dict[int, str]],
    ) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
        rel, sig, src = {}, {}, {}
        for g in a[0]:
            if g not in b[0]:
                continue
            rel[g] = math.sqrt(a[0][g] * b[0][g])
            sig[g] = self.blend_sigma.get(g, max(a[1].get(g, 0.0), b[1].get(g, 0.0)))
            if a[2].get(g) == "measured":
                sig[g], src[g] = 0.0, "measured"
            elif "physical" in (a[2].get(g), b[2].get(g)):
                src[g] = "physical"
            else:
                src[g] = "blend"
        return rel, sig, src

    def detail_one(
        self,
        mps: Mapping[int, float],
        jobs_in_mix: int,
        mix: Sequence[Mapping[int, float]],
        memory_mb: float | None,
        gpu_model: GpuModel | None,
    ) -> tuple[dict[int, float], dict[int, float], dict[int, str]]:
        gpu = gpu_model or self.default_gpu
        a = self.prior.detail_one(mps, jobs_in_mix, mix, memory_mb, gpu)
        b = self.fitted.detail_one(mps, jobs_in_mix, mix, memory_mb, gpu)
        return self._combine(a, b)

    def predict_many(
        self, jobs: Sequence[Mapping[str, Any]], *, gpu_model: GpuModel | None = None
    ) -> list[SlicePrediction]:
        return [
            self.predict_one(
                j["mps"],
                jobs_in_mix=int(j.get("jobs_in_mix", 1)),
                mix=j.get("mix"),
                memory_mb=j.get("memory_mb"),
                gpu_model=gpu_model,
            )
            for j in jobs
        ]

    def predict_rows(
        self, rows: Sequence[ProfileRow], *, gpu_model: GpuModel | None = None
    ) -> list[tuple[dict[int, float], dict[int, float], dict[int, str]]]:
        gpu = gpu_model or self.default_gpu
        a = self.prior.predict_rows(rows, gpu_model=gpu)
        b = self.fitted.predict_rows(rows, gpu_model=gpu)
        return [self._combine(x, y) for x, y in zip(a, b, strict=True)]


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
