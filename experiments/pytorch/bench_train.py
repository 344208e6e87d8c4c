#!/usr/bin/env python3
"""Training throughput of the reference CNN in PyTorch on this machine's CPU, measured the
way fl-core's `training_throughput` test measures burn: SGD (momentum 0.9),
cross-entropy, synthetic normalised images, the loss read back every step.

    python experiments/pytorch/bench_train.py [--batch 64] [--steps 20] [--warmup 3] [--dp MODE]

`--dp opacus` (or `ghost`) takes DP-SGD steps through Opacus 1.6 instead (per-example
clipping to 1.0, noise multiplier 1.0, the same batch every step), as fl-core's
`dp_sgd_throughput` test does with burn.

Prints one JSON line: {"batch": 64, "steps": 20, "images_per_sec": ..., "threads": ...}.
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F

from fedavg_cnn import FedAvgCNN


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dp", choices=["opacus", "ghost"], default=None)
    args = p.parse_args()

    torch.manual_seed(0)
    model = FedAvgCNN().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, dampening=0.0)
    images = torch.randn(args.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))

    criterion = torch.nn.CrossEntropyLoss()
    if args.dp:
        from opacus import PrivacyEngine

        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(images, labels), batch_size=args.batch)
        extra = {"grad_sample_mode": "ghost"} if args.dp == "ghost" else {}
        made = PrivacyEngine(accountant="rdp").make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False, criterion=criterion, **extra)
        model, opt = made[0], made[1]
        if args.dp == "ghost":
            criterion = made[2]

    def step():
        opt.zero_grad()
        loss = criterion(model(images), labels)
        loss.backward()
        opt.step()
        return loss.item()

    for _ in range(args.warmup):
        step()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    seconds = time.perf_counter() - start
    print(json.dumps({
        "batch": args.batch,
        "steps": args.steps,
        "dp": args.dp,
        "images_per_sec": args.batch * args.steps / seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
