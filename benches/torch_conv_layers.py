#!/usr/bin/env python3
"""PyTorch's time for the convolution layers `conv_layer_times` times in annt.

Each layer as `nn.Conv2d(bias=False)` on random f32 data: the forward alone, then the
backward alone (`y.backward(dy)`, both gradients), fastest of `--reps`, in ms. The layer
list and the output lines match annt's test, so the two can be read side by side:

    ANNT_UNIT=f ANNT_REPS=20 RAYON_NUM_THREADS=2 \
        cargo test --release --lib conv_layer_times -- --ignored --nocapture
    OMP_NUM_THREADS=2 python3 benches/torch_conv_layers.py --threads 2
"""

import argparse
import time

import torch

# (batch, c_in, c_out, side, kernel, stride): ResNet-8-tiny at batch 64, ResNet-18-CIFAR at 32.
LAYERS = [
    (64, 3, 16, 32, 3, 1),
    (64, 16, 16, 32, 3, 1),
    (64, 16, 32, 32, 3, 2),
    (64, 16, 32, 32, 1, 2),
    (64, 32, 32, 16, 3, 1),
    (64, 32, 64, 16, 3, 2),
    (64, 32, 64, 16, 1, 2),
    (64, 64, 64, 8, 3, 1),
    (32, 3, 64, 32, 3, 1),
    (32, 64, 64, 32, 3, 1),
    (32, 64, 128, 32, 3, 2),
    (32, 64, 128, 32, 1, 2),
    (32, 128, 128, 16, 3, 1),
    (32, 128, 256, 16, 3, 2),
    (32, 128, 256, 16, 1, 2),
    (32, 256, 256, 8, 3, 1),
    (32, 256, 512, 8, 3, 2),
    (32, 256, 512, 8, 1, 2),
    (32, 512, 512, 4, 3, 1),
]


def fastest(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, fastest of {args.reps}, ms")
    for n, ci, co, side, k, stride in LAYERS:
        conv = torch.nn.Conv2d(ci, co, k, stride=stride, padding=k // 2, bias=False)
        x = torch.randn(n, ci, side, side, requires_grad=True)
        y = conv(x)
        dy = torch.randn_like(y)
        # One untimed pass of each warms the allocator and oneDNN's kernel cache.
        conv(x).backward(dy)
        fwd = fastest(lambda: conv(x), args.reps)

        def backward():
            out = conv(x)
            t = time.perf_counter()
            out.backward(dy)
            return time.perf_counter() - t

        bwd = min(backward() for _ in range(args.reps)) * 1e3
        print(f"n{n} {ci}→{co} {side}² k{k} s{stride}:  torch fwd {fwd:.2f} bwd {bwd:.2f}")


if __name__ == "__main__":
    main()
