#!/usr/bin/env python3
"""annt's PyTorch yardstick: the same training workload as `annt speed`, in PyTorch eager.

One JSON line per precision mode on stdout (the same keys `annt speed` prints), so
benches/compare_torch.py can put the two side by side from one run on one machine.

  python3 benches/torch_peer.py --model resnet50 --res 32 --batch 256 \
      --modes fp32,tf32,amp-bf16,amp-fp16 --steps 50 --warmup 10 --device cuda

Workload rules (kept identical to annt's `annt speed`, src/engine/speed.rs):
- synthetic data: a pool of 8 batches of random uint8 images and random labels in host
  memory (pinned on CUDA unless --pageable), copied with non_blocking=True and normalised on
  the device, as a real loader's batches would be;
- SGD, Nesterov momentum 0.9, lr 0.01, weight decay 5e-4; cross-entropy;
- modes: fp32 (TF32 off for both cuBLAS and cuDNN), tf32 (both on), amp-bf16 and amp-fp16
  (torch.autocast; fp16 with a GradScaler);
- the first --warmup steps are not timed; the device is synchronised before the clock is
  started and before it is read.

Models: resnet8_tiny (annt's 78 042-parameter demo network), resnet18 / resnet50 with the
CIFAR stem (3x3 stride-1 first conv, no max-pool), efficientnet_b0, vit_b_16,
vit_tiny_p4 (ViT-Ti with 4x4 patches, for 32 px).
"""
import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torchvision


class BasicBlock(nn.Module):
    """A ResNet basic block (two 3x3 convs), as annt's resnet8-tiny uses."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.shortcut is None else self.shortcut(x)))


def model_for(name: str, classes: int, res: int) -> nn.Module:
    if name == "resnet8_tiny":
        return nn.Sequential(
            nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 64, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, classes))
    if name in ("resnet18", "resnet50"):
        m = getattr(torchvision.models, name)(num_classes=classes)
        m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
        return m
    if name == "efficientnet_b0":
        return torchvision.models.efficientnet_b0(num_classes=classes)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(num_classes=classes, image_size=res)
    if name == "vit_tiny_p4":
        return torchvision.models.VisionTransformer(
            image_size=res, patch_size=4, num_layers=12, num_heads=3, hidden_dim=192,
            mlp_dim=768, num_classes=classes)
    raise SystemExit(f"torch_peer: unknown model {name!r}")


def measure(args, mode: str) -> dict:
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    torch.manual_seed(0)
    tf32 = mode == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = True
    model = model_for(args.model, args.classes, args.res).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = nn.CrossEntropyLoss()
    autocast = {"amp-bf16": torch.bfloat16, "amp-fp16": torch.float16}.get(mode)
    scaler = torch.amp.GradScaler(device.type, enabled=mode == "amp-fp16")

    pool = 8
    images = torch.randint(0, 256, (pool, args.batch, 3, args.res, args.res), dtype=torch.uint8)
    targets = torch.randint(0, args.classes, (pool, args.batch))
    if on_cuda and not args.pageable:
        images, targets = images.pin_memory(), targets.pin_memory()
    mean = 255 * torch.tensor([0.4914, 0.4822, 0.4465], device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor([0.2470, 0.2435, 0.2616], device=device).view(1, 3, 1, 1)

    def train_step(i: int):
        x = images[i % pool].to(device, non_blocking=True)
        y = targets[i % pool].to(device, non_blocking=True)
        x = (x.float() - mean) / std
        with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            loss = criterion(model(x), y) / args.accum
        scaler.scale(loss).backward()
        if (i + 1) % args.accum == 0:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        train_step(i)
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(args.steps):
        train_step(i)
    if on_cuda:
        torch.cuda.synchronize()
    secs = time.perf_counter() - start
    row = {
        "peer": "pytorch",
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "threads": torch.get_num_threads(),
        "model": args.model,
        "res": args.res,
        "batch": args.batch,
        "accum": args.accum,
        "mode": mode,
        "pinned": on_cuda and not args.pageable,
        "steps": args.steps,
        "images_per_s": round(args.steps * args.batch / secs, 1),
        "ms_per_step": round(1000 * secs / args.steps, 3),
        "params": sum(p.numel() for p in model.parameters()),
    }
    if on_cuda:
        row["peak_mem_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--res", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--modes", default="fp32,amp-bf16")
    p.add_argument("--pageable", action="store_true")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU runs)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for mode in args.modes.split(","):
        if mode == "tf32" and args.device == "cpu":
            print("torch_peer: skipped: tf32 does not apply on the CPU", file=sys.stderr)
            continue
        print(json.dumps(measure(args, mode)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
