#!/usr/bin/env python3
"""annt vs PyTorch training throughput, back to back on the same device.

Runs `annt speed` and benches/torch_peer.py (annt's PyTorch yardstick) with the same
workload -- synthetic u8 CIFAR-shaped data, same model, batch, modes, warm-up excluded,
device synchronised -- and prints a Markdown table: model x mode x images/s for each, the
ratio annt/PyTorch, and each one's AMP speed-up over its own fp32. Where PyTorch is not
installed (or a peer run fails) the table says so and keeps annt's figures.

  python3 benches/compare_torch.py --annt target/release/annt --device cuda \
      [--peer benches/torch_peer.py] [--models resnet50,efficientnet_b0,vit_b_16] \
      [--modes fp32,tf32,amp-bf16,amp-fp16] [--steps 50 --warmup 10] [--json-out FILE] \
      [--md-out FILE] [--threads N]

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
    "resnet8_tiny": (32, 64),
}


def lines(cmd, required=True):
    """Runs cmd, echoes stderr, returns the JSON objects it printed on stdout. A failing
    optional command (the PyTorch peer) gives no rows and a note instead of an exit."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    try:
        out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    except OSError as e:
        if required:
            raise SystemExit(f"cannot run {cmd[0]}: {e}")
        NOTES.append(f"not run: {' '.join(cmd)} ({e})")
        return []
    if out.returncode != 0:
        if required:
            raise SystemExit(f"failed ({out.returncode}): {' '.join(cmd)}")
        NOTES.append(f"failed ({out.returncode}): {' '.join(cmd)}")
    return [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]


NOTES = []


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--annt", default=os.path.join(here, "..", "target", "release", "annt"))
    p.add_argument("--peer", default=os.path.join(here, "torch_peer.py"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", default="resnet50,efficientnet_b0,vit_b_16")
    p.add_argument("--modes", default="fp32,tf32,amp-bf16,amp-fp16")
    p.add_argument("--batch", type=int)
    p.add_argument("--res", type=int)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--json-out")
    p.add_argument("--md-out", help="also write the Markdown table here")
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch (set OMP_NUM_THREADS for annt's)")
    args = p.parse_args()

    rows = []
    for model in args.models.split(","):
        res, batch = WORKLOADS.get(model, (32, 256))
        res, batch = args.res or res, args.batch or batch
        common = ["--model", model, "--res", str(res), "--batch", str(batch), "--modes", args.modes,
                  "--steps", str(args.steps), "--warmup", str(args.warmup)]
        annt_device = "cuda:0" if args.device == "cuda" else args.device
        ours = lines([args.annt, "speed", *common, "--device", annt_device])
        peer = [args.python, args.peer, *common, "--device", args.device]
        if args.threads:
            peer += ["--threads", str(args.threads)]
        theirs = lines(peer, required=False)
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
             "vit-b16": "vit_b_16", "vit-ti4": "vit_tiny_p4", "resnet8-tiny": "resnet8_tiny"}
    for r in rows:
        r["_model"] = names.get(r["model"], r["model"])

    device = next((r["device"] for r in rows if r["peer"] == "pytorch"), args.device)
    out = [f"Device: {device}; {args.steps} timed steps after {args.warmup} warm-up steps; images/s.", "",
           "| model | res | batch | mode | annt | PyTorch | annt / PyTorch | annt vs own fp32 | PyTorch vs own fp32 |",
           "|---|---|---|---|---|---|---|---|---|"]
    for model in args.models.split(","):
        res, batch = WORKLOADS.get(model, (32, 256))
        key = (model, args.res or res, args.batch or batch)
        base_a, base_t = find("annt", key, "fp32"), find("pytorch", key, "fp32")
        for mode in args.modes.split(","):
            a, t = find("annt", key, mode), find("pytorch", key, mode)
            if not a and not t:
                continue
            fa = f"{a['images_per_s']:.1f}" if a else "–"
            ft = f"{t['images_per_s']:.1f}" if t else "–"
            ratio = f"{a['images_per_s'] / t['images_per_s']:.2f}x" if a and t and t["images_per_s"] else "–"
            sa = f"{a['images_per_s'] / base_a['images_per_s']:.2f}x" if a and base_a and base_a["images_per_s"] else "–"
            st = f"{t['images_per_s'] / base_t['images_per_s']:.2f}x" if t and base_t and base_t["images_per_s"] else "–"
            out.append(f"| {model} | {key[1]} | {key[2]} | {mode} | {fa} | {ft} | {ratio} | {sa} | {st} |")
    for n in NOTES:
        out.append("")
        out.append(f"Note: {n}")
    text = "\n".join(out) + "\n"
    print("\n" + text)
    if args.md_out:
        with open(args.md_out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
