#!/usr/bin/env python3
"""annt vs PyTorch training throughput, back to back on the same device.

Runs `annt speed` and `../shared/peer/torch_peer.py` (the PyTorch yardstick) with the same
workload -- synthetic u8 CIFAR-shaped data, same model, batch, modes, warm-up excluded,
device synchronised -- and prints a Markdown table: model x mode x images/s for each, the
ratio annt/PyTorch, and each one's AMP speed-up over its own fp32.

  python3 benches/compare_torch.py --annt target/release/annt --device cuda \
      [--peer ../shared/peer/torch_peer.py] [--models resnet50,efficientnet_b0,vit_b_16] \
      [--modes fp32,tf32,amp-bf16,amp-fp16] [--steps 50 --warmup 10] [--json-out FILE]

The default workloads are the CUDA issue's: ResNet-50-CIFAR at 32 px batch 256,
EfficientNet-B0 at 224 batch 96, ViT-B/16 at 224 batch 64. `--batch N` and `--res N`
override every workload (for a quick CPU check: --device cpu --models resnet18 --batch 32).
"""
import argparse
import json
import os
import subprocess
import sys

WORKLOADS = {
    "resnet50": (32, 256),
    "efficientnet_b0": (224, 96),
    "vit_b_16": (224, 64),
    "resnet18": (32, 256),
    "vit_tiny_p4": (32, 256),
}


def lines(cmd):
    """Runs cmd, echoes stderr, returns the JSON objects it printed on stdout."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annt", default=os.path.join(here, "..", "target", "release", "annt"))
    p.add_argument("--peer", default=os.path.join(here, "..", "..", "shared", "peer", "torch_peer.py"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="resnet50,efficientnet_b0,vit_b_16")
    p.add_argument("--modes", default="fp32,tf32,amp-bf16,amp-fp16")
    p.add_argument("--batch", type=int)
    p.add_argument("--res", type=int)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json-out")
    args = p.parse_args()

    rows = []
    for model in args.models.split(","):
        res, batch = WORKLOADS.get(model, (32, 256))
        res, batch = args.res or res, args.batch or batch
        common = ["--model", model, "--res", str(res), "--batch", str(batch), "--modes", args.modes,
                  "--steps", str(args.steps), "--warmup", str(args.warmup)]
        annt_device = "cuda:0" if args.device == "cuda" else args.device
        ours = lines([args.annt, "speed", *common, "--device", annt_device])
        theirs = lines([args.python, args.peer, *common, "--device", args.device])
        rows += ours + theirs

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)

    def find(peer, model_res_batch, mode):
        for r in rows:
            if r["peer"] == peer and (r["res"], r["batch"]) == model_res_batch[1:] and r["mode"] == mode \
                    and r["_model"] == model_res_batch[0]:
                return r
        return None

    # Tag each row with the peer's model name so both sides line up.
    names = {"resnet50-cifar": "resnet50", "resnet18-cifar": "resnet18", "efficientnet-b0": "efficientnet_b0",
             "vit-b16": "vit_b_16", "vit-ti4": "vit_tiny_p4"}
    for r in rows:
        r["_model"] = names.get(r["model"], r["model"])

    device = next((r["device"] for r in rows if r["peer"] == "pytorch"), args.device)
    print(f"\nDevice: {device}; {args.steps} timed steps after {args.warmup} warm-up steps; images/s.\n")
    print("| model | res | batch | mode | annt | PyTorch | annt / PyTorch | annt vs own fp32 | PyTorch vs own fp32 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        res, batch = WORKLOADS.get(model, (32, 256))
        key = (model, args.res or res, args.batch or batch)
        base_a, base_t = find("annt", key, "fp32"), find("pytorch", key, "fp32")
        for mode in args.modes.split(","):
            a, t = find("annt", key, mode), find("pytorch", key, mode)
            if not a or not t:
                continue
            ratio = a["images_per_s"] / t["images_per_s"] if t["images_per_s"] else float("nan")
            sa = a["images_per_s"] / base_a["images_per_s"] if base_a else float("nan")
            st = t["images_per_s"] / base_t["images_per_s"] if base_t else float("nan")
            print(f"| {model} | {key[1]} | {key[2]} | {mode} | {a['images_per_s']:.1f} | {t['images_per_s']:.1f} "
                  f"| {ratio:.2f}x | {sa:.2f}x | {st:.2f}x |")


if __name__ == "__main__":
    main()
