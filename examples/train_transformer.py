"""Train a small Transformer language model on random tokens: a real GPU workload.

Needs PyTorch only. Prints a tqdm-style progress bar line (``12%|...| 360/3000 [...]``),
which miso's built-in tqdm pattern reads from the log, so it shows how a script
that does not import ``miso_cli`` is followed. Saves a checkpoint on the checkpoint
signal (``MISO_CHECKPOINT_SIGNAL``, else SIGUSR1) and resumes from ``--resume``.

    python examples/train_transformer.py --steps 3000
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import time
from pathlib import Path


def bar_line(n: int, total: int, elapsed: float, done_here: int | None = None) -> str:
    """A progress line in tqdm's format: ``desc: pct%|bar| n/total [elapsed<left, rate]``."""
    frac = n / total
    filled = int(10 * frac)
    here = n if done_here is None else done_here  # steps run by this process (after a resume)
    rate = here / elapsed if elapsed > 0 else 0.0
    left = (total - n) / rate if rate else 0.0

    def mmss(s: float) -> str:
        return f"{int(s) // 60:02d}:{int(s) % 60:02d}"

    return (
        f"train: {int(100 * frac):3d}%|{'#' * filled}{' ' * (10 - filled)}| {n}/{total} "
        f"[{mmss(elapsed)}<{mmss(left)}, {rate:.2f}it/s]"
    )


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--d-model", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--resume", default=None, help="checkpoint to resume from / save to")
    ap.add_argument(
        "--device",
        default="cuda",
        help="cuda (the slice miso pins) or cpu, to try the script on a machine without a GPU",
    )
    ap.add_argument("--log-every", type=int, default=20)
    args = ap.parse_args(argv)

    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_transformer: no CUDA device visible", file=sys.stderr)
        return 1
    dev = torch.device(args.device)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(args.vocab, args.d_model)
            self.pos = nn.Parameter(torch.zeros(1, args.seq_len, args.d_model))
            layer = nn.TransformerEncoderLayer(
                args.d_model,
                args.heads,
                4 * args.d_model,
                dropout=0.1,
                batch_first=True,
                norm_first=True,
            )
            self.body = nn.TransformerEncoder(layer, args.layers)
            self.head = nn.Linear(args.d_model, args.vocab)
            mask = torch.full((args.seq_len, args.seq_len), float("-inf")).triu(1)
            self.register_buffer("mask", mask)

        def forward(self, tokens):  # type: ignore[no-untyped-def]
            h = self.emb(tokens) * math.sqrt(args.d_model) + self.pos
            return self.head(self.body(h, mask=self.mask, is_causal=True))

    model = LM().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    ckpt = Path(args.resume) if args.resume else None
    if ckpt is None and os.environ.get("MISO_CHECKPOINT_DIR"):
        ckpt = Path(os.environ["MISO_CHECKPOINT_DIR"]) / "transformer.pt"
    start = 0
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        print(f"train_transformer: resumed at step {start}", flush=True)

    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    for name in {os.environ.get("MISO_CHECKPOINT_SIGNAL", "SIGUSR1"), "SIGTERM"}:
        signal.signal(signal.Signals[name], on_signal)

    tokens = torch.randint(0, args.vocab, (args.batch_size, args.seq_len + 1), device=dev)
    x, y = tokens[:, :-1], tokens[:, 1:]
    t0 = time.time()
    step = start
    while step < args.steps and not stop["now"]:
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, args.vocab).float(), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % args.log_every == 0 or step == args.steps:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            # "\r" like tqdm: the log keeps one line per refresh, miso reads the latest.
            sys.stderr.write("\r" + bar_line(step, args.steps, time.time() - t0, step - start))
            sys.stderr.flush()
    sys.stderr.write("\n")
    if ckpt is not None and stop["now"]:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, ckpt)
        print(f"train_transformer: checkpoint saved at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
