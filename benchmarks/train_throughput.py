#!/usr/bin/env python
"""CPU training throughput: threads, memory layout and ``torch.compile`` (issue 9's short-budget list).

    python benchmarks/train_throughput.py [--threads 1 2] [--width 16] [--patch-size 48] [--batch-size 4]

One training step of the edge-to-image U-Net (rectified-flow loss, backward, Adam) on a random batch of
patches, timed after warm-up for every combination of thread count, memory layout (channels-last 3D, which
``Trainer`` uses on CPU, or the default contiguous layout) and ``torch.compile`` (off or on, default
inductor backend). Seconds a step are the median of ``--repeats`` steps.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time

import torch

from bhd_app.method.flow import rectified_flow_loss, training_noise
from bhd_app.method.model import EdgeToImageUNet, UNetConfig


def seconds_per_step(width: int, patch: int, batch: int, channels_last: bool, compiled: bool,
                     warmup: int, repeats: int) -> float:
    torch.manual_seed(0)
    net = EdgeToImageUNet(UNetConfig(base_width=width))
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    model = torch.compile(net) if compiled else net
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x1 = torch.rand(batch, 1, patch, patch, patch).contiguous(memory_format=layout)
    cond = torch.rand(batch, 4, patch, patch, patch).contiguous(memory_format=layout)
    times = []
    for k in range(warmup + repeats):
        t0 = time.perf_counter()
        noise = training_noise(tuple(x1.shape), 0.5)
        loss = rectified_flow_loss(model, x1, cond, "image", noise=noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--patch-size", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, width {args.width}, "
          f"{args.patch_size}^3 patches, batch {args.batch_size}")
    print("| threads | layout | torch.compile | s a step |\n|---|---|---|---|")
    for threads, channels_last, compiled in itertools.product(args.threads, (True, False), (False, True)):
        torch.set_num_threads(threads)
        s = seconds_per_step(args.width, args.patch_size, args.batch_size, channels_last, compiled,
                             args.warmup + (2 if compiled else 0), args.repeats)
        print(f"| {threads} | {'channels-last 3D' if channels_last else 'contiguous'} | "
              f"{'on' if compiled else 'off'} | {s:.2f} |", flush=True)


if __name__ == "__main__":
    main()
