"""Regenerate a shipped prior (``predictors/<gpu model>.json``) from measurements."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from miso_cli.predict.data import read_many
from miso_cli.predict.prior import DEFAULT_PRIOR_GPU, build_prior


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate a shipped predictor prior.")
    parser.add_argument("--pairs", type=Path, required=True, help="MPS/MIG pairs CSV")
    parser.add_argument("--catalog", type=Path, required=True, help="catalog CSV (2g/1g check)")
    parser.add_argument("--gpu-model", default=DEFAULT_PRIOR_GPU)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    pairs = read_many([args.pairs], require_mig_7g=True)
    catalog = read_many([args.catalog], require_mig_7g=True)
    doc = build_prior(
        pairs,
        catalog,
        gpu_model_key=args.gpu_model,
        provenance={
            "measurements": (
                "NVIDIA A100-SXM4-40GB, driver 470, CUDA 11.4, TensorFlow 2.6; the MISO "
                "artifact (Li et al., ACM SoCC 2022, github.com/boringlee24/socc22-miso, MIT)"
            ),
            "pairs": args.pairs.name,
            "catalog": args.catalog.name,
            "generated_by": "python -m miso_cli.predict.make_prior",
        },
    )
    args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
