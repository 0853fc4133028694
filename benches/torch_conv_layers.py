#!/usr/bin/env python3
"""PyTorch's time per convolution of resnet18-cifar (batch 32) and resnet8-tiny (batch 64),
the layers and batch sizes of annt's `conv_layer_times` (src/models/layers/kernels/cpu.rs):

    RAYON_NUM_THREADS=2 cargo test --release --lib conv_layer_times -- --ignored --nocapture
    OMP_NUM_THREADS=2 python3 benches/torch_conv_layers.py --threads 2

Both print the fastest of several repetitions in milliseconds (this machine's noise only
ever adds time). `fwd` is the forward pass without autograd; `bwd` is the backward alone
(input and weight gradients; the weight's only for a 3-channel first layer, whose input is
the images), replayed on one recorded forward pass: annt's `bwd` is its backward alone too.
"""

import argparse
import time

import torch

# (n, c, c_out, side, k, stride, pad), as in conv_layer_times.
LAYERS = [
    (64, 3, 16, 32, 3, 1, 1),
    (64, 16, 16, 32, 3, 1, 1),
    (64, 16, 32, 32, 3, 2, 1),
    (64, 16, 32, 32, 1, 2, 0),
    (64, 32, 32, 16, 3, 1, 1),
    (64, 32, 64, 16, 3, 2, 1),
    (64, 32, 64, 16, 1, 2, 0),
    (64, 64, 64, 8, 3, 1, 1),
    (32, 3, 64, 32, 3, 1, 1),
    (32, 64, 64, 32, 3, 1, 1),
    (32, 64, 128, 32, 3, 2, 1),
    (32, 64, 128, 32, 1, 2, 0),
    (32, 128, 128, 16, 3, 1, 1),
    (32, 128, 256, 16, 3, 2, 1),
    (32, 128, 256, 16, 1, 2, 0),
    (32, 256, 256, 8, 3, 1, 1),
    (32, 256, 512, 8, 3, 2, 1),
    (32, 256, 512, 8, 1, 2, 0),
    (32, 512, 512, 4, 3, 1, 1),
]


def fastest(f, reps):
    f()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: PyTorch's default)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--only", default="", help="only the layers whose label starts with this")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for n, c, co, side, k, stride, pad in LAYERS:
        label = f"n{n} {c}→{co} {side}² k{k} s{stride}"
        if not label.startswith(args.only):
            continue
        conv = torch.nn.Conv2d(c, co, k, stride, pad, bias=False)
        x = torch.randn(n, c, side, side, requires_grad=c != 3)
        dy = torch.randn_like(conv(x))

        def fwd():
            with torch.no_grad():
                conv(x)

        y = conv(x)
        inputs = [conv.weight] + ([x] if c != 3 else [])

        def bwd():
            torch.autograd.grad(y, inputs, dy, retain_graph=True)

        f = fastest(fwd, args.reps)
        b = fastest(bwd, args.reps)
        print(f"{label}:  torch fwd {f:.2f} bwd {b:.2f}", flush=True)


if __name__ == "__main__":
    main()
