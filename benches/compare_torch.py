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
      [--md-out FILE] [--threads N] [--rounds N]

With `--rounds N` the pair runs N times, annt first in odd rounds and PyTorch first in even
ones, and each cell is the median over the rounds, with the ratios' range beside it: a
ratio is taken within one round (annt and PyTorch a minute apart), so a machine that speeds
up or slows down between rounds moves both sides of it.

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
    p.add_argument("--rounds", type=int, default=1, help="alternate the pair this many times; medians")
    args = p.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be at least 1")

    rows = []
    for rnd in range(args.rounds):
        for model in args.models.split(","):
            res, batch = WORKLOADS.get(model, (32, 256))
            res, batch = args.res or res, args.batch or batch
            common = ["--model", model, "--res", str(res), "--batch", str(batch), "--modes", args.modes,
                      "--steps", str(args.steps), "--warmup", str(args.warmup)]
            annt_device = "cuda:0" if args.device == "cuda" else args.device
            ours_cmd = [args.annt, "speed", *common, "--device", annt_device]
            peer = [args.python, args.peer, *common, "--device", args.device]
            if args.threads:
                peer += ["--threads", str(args.threads)]
            if rnd % 2 == 0:
                ours, theirs = lines(ours_cmd), lines(peer, required=False)
            else:
                theirs, ours = lines(peer, required=False), lines(ours_cmd)
            for r in ours + theirs:
                r["round"] = rnd
            rows += ours + theirs

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)

    def find(peer, model_res_batch, mode, rnd):
        for r in rows:
            if r["peer"] == peer and (r["res"], r["batch"]) == model_res_batch[1:] and r["mode"] == mode \
                    and r["_model"] == model_res_batch[0] and r["round"] == rnd:
                return r
        return None

    def median(xs):
        xs = sorted(xs)
        n = len(xs)
        return None if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)

    def cell(values, fmt):
        """The median of `values` (one per round that has it), with their range where they
        differ."""
        m = median(values)
        if m is None:
            return "–"
        if min(values) == max(values):
            return fmt(m)
        return f"{fmt(m)} ({fmt(min(values))}–{fmt(max(values))})"

    # Tag each row with the peer's model name so both sides line up.
    names = {"resnet50-cifar": "resnet50", "resnet18-cifar": "resnet18", "efficientnet-b0": "efficientnet_b0",
             "vit-b16": "vit_b_16", "vit-ti4": "vit_tiny_p4", "resnet8-tiny": "resnet8_tiny"}
    for r in rows:
        r["_model"] = names.get(r["model"], r["model"])

    device = next((r["device"] for r in rows if r["peer"] == "pytorch"), args.device)
    rounds = "" if args.rounds == 1 else \
        f"; median of {args.rounds} alternating rounds (range in brackets), each ratio within one round"
    out = [f"Device: {device}; {args.steps} timed steps after {args.warmup} warm-up steps; images/s{rounds}.", "",
           "| model | res | batch | mode | annt | PyTorch | annt / PyTorch | annt vs own fp32 | PyTorch vs own fp32 |",
           "|---|---|---|---|---|---|---|---|---|"]
    speed = lambda v: f"{v:.1f}"
    times = lambda v: f"{v:.2f}x"
    for model in args.models.split(","):
        res, batch = WORKLOADS.get(model, (32, 256))
        key = (model, args.res or res, args.batch or batch)
        for mode in args.modes.split(","):
            per_round = [(find("annt", key, mode, k), find("pytorch", key, mode, k),
                          find("annt", key, "fp32", k), find("pytorch", key, "fp32", k))
                         for k in range(args.rounds)]
            if not any(a or t for a, t, _, _ in per_round):
                continue
            ips = lambda r: r["images_per_s"] if r else None
            ratio = lambda x, y: x["images_per_s"] / y["images_per_s"] if x and y and y["images_per_s"] else None
            keep = lambda xs: [x for x in xs if x is not None]
            fa = cell(keep([ips(a) for a, _, _, _ in per_round]), speed)
            ft = cell(keep([ips(t) for _, t, _, _ in per_round]), speed)
            vs = cell(keep([ratio(a, t) for a, t, _, _ in per_round]), times)
            sa = cell(keep([ratio(a, ba) for a, _, ba, _ in per_round]), times)
            st = cell(keep([ratio(t, bt) for _, t, _, bt in per_round]), times)
            out.append(f"| {model} | {key[1]} | {key[2]} | {mode} | {fa} | {ft} | {vs} | {sa} | {st} |")
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
