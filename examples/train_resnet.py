"""Train a ResNet on synthetic images: a real GPU workload for ``miso run``.

Needs PyTorch (and torchvision for the ResNet; without it a small ResNet defined
here is used). Data is random, so it needs no download; what matters is the GPU
work. It reports progress through ``miso_cli.report`` (and prints a line every
``--log-every`` steps), saves a checkpoint when miso sends the checkpoint signal,
and resumes from ``--resume PATH`` when that file exists.

    python examples/train_resnet.py --steps 2000 --batch-size 64
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from miso_cli import report  # noqa: E402


def small_resnet(num_classes: int):  # type: ignore[no-untyped-def]
    import torch.nn as nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                nn.BatchNorm2d(cout),
            )
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )
            self.act = nn.ReLU(inplace=True)

        def forward(self, x):  # type: ignore[no-untyped-def]
            return self.act(self.body(x) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--amp", action="store_true", help="mixed precision (bfloat16)")
    ap.add_argument("--resume", default=None, help="checkpoint to resume from / save to")
    ap.add_argument(
        "--device",
        default="cuda",
        help="cuda (the slice miso pins) or cpu, to try the script on a machine without a GPU",
    )
    ap.add_argument("--log-every", type=int, default=50)
    args = ap.parse_args(argv)

    import torch
    import torch.nn.functional as F

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "train_resnet: no CUDA device visible (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})",
            file=sys.stderr,
        )
        return 1
    dev = torch.device(args.device)
    try:
        import torchvision

        model = torchvision.models.resnet50(num_classes=args.classes)
    except ImportError:
        model = small_resnet(args.classes)
    model = model.to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=1e-4)
    ckpt = Path(args.resume) if args.resume else None
    if ckpt is None and report.checkpoint_dir():
        ckpt = Path(report.checkpoint_dir()) / "resnet.pt"
    start = 0
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=dev)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start = int(state["step"])
        print(f"train_resnet: resumed from {ckpt} at step {start}", flush=True)

    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    for name in {os.environ.get("MISO_CHECKPOINT_SIGNAL", "SIGUSR1"), "SIGTERM"}:
        signal.signal(signal.Signals[name], on_signal)

    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=dev)
    x = x.to(memory_format=torch.channels_last)
    y = torch.randint(0, args.classes, (args.batch_size,), device=dev)
    model.train()
    t_last = time.time()
    step = start
    while step < args.steps and not stop["now"]:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        report.step(step, args.steps)
        if step % args.log_every == 0:
            if dev.type == "cuda":
                torch.cuda.synchronize()
            now = time.time()
            rate = args.log_every * args.batch_size / (now - t_last)
            t_last = now
            print(f"step {step}/{args.steps} loss {loss.item():.4f} {rate:.0f} img/s", flush=True)
    report.done()
    if ckpt is not None and stop["now"]:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step}, tmp)
        os.replace(tmp, ckpt)
        print(f"train_resnet: checkpoint saved at step {step}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
