#!/usr/bin/env python3
"""DP-SGD on the reference CNN with Opacus: the anchor `fl baseline --dp-epsilon` is compared
with (same model, initial weights, data, recipe; see experiments/dp_sgd_vs_opacus.sh).

The recipe is the one `fl baseline` runs with DP-SGD:
  * Poisson sampling: each step takes every training image independently with probability
    q = 1 / ceil(n / batch) (Opacus's DPDataLoader), ceil(n / batch) steps per epoch;
  * each example's gradient of its own cross-entropy clipped to L2 norm C, Gaussian noise
    N(0, (z C)^2) added to their sum, divided by the expected batch size;
  * then SGD with momentum (no dampening) and weight decay, applied after the noise;
  * no augmentation, images normalised as REFERENCE_CNN.md says.

Prints one JSON line per epoch (test accuracy, images/s, epsilon from Opacus's RDP
accountant at --delta) and a last "done" line. `--mode none` runs the same recipe without
privacy (plain PyTorch, shuffled batches of --batch), `--mode ghost` Opacus's ghost clipping.

Pinned in requirements.txt beside this file (torch 2.15.0, opacus 1.6.0).
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fedavg_cnn import evaluate, learning_rate, load_model, load_raw, normalise  # noqa: E402


def load_train(data, images):
    parts = [load_raw(os.path.join(data, f"data_batch_{i}.bin")) for i in range(1, 6)]
    raw = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if images is not None:
        raw, labels = raw[:images], labels[:images]
    return normalise(raw), labels


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="initial model (safetensors), e.g. `fl ipfs get` of the init CID")
    p.add_argument("data", help="CIFAR-10 binary directory (data_batch_*.bin, test_batch.bin)")
    p.add_argument("--mode", choices=["opacus", "ghost", "none"], default="opacus")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=256, help="expected batch size (sets q)")
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--schedule", default="constant")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--clip", type=float, default=1.0, help="per-example L2 clip norm C")
    p.add_argument("--noise-multiplier", type=float, help="z (noise std is z C)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--images", type=int, default=None, help="first N training images only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    images, labels = load_train(args.data, args.images)
    test_raw, test_labels = load_raw(os.path.join(args.data, "test_batch.bin"))
    test_images = normalise(test_raw)
    n = len(labels)
    model = load_model(args.model).train()
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          dampening=0.0, weight_decay=args.weight_decay)
    dataset = torch.utils.data.TensorDataset(images, labels)
    gen = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, generator=gen)
    steps = len(loader)
    engine = None
    if args.mode != "none":
        from opacus import PrivacyEngine

        if args.noise_multiplier is None:
            sys.exit("--noise-multiplier is needed with Opacus")
        engine = PrivacyEngine(accountant="rdp")
        extra = {"grad_sample_mode": "ghost"} if args.mode == "ghost" else {}
        criterion = torch.nn.CrossEntropyLoss()
        made = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                   noise_multiplier=args.noise_multiplier,
                                   max_grad_norm=args.clip, poisson_sampling=True,
                                   criterion=criterion, **extra)
        if args.mode == "ghost":
            model, opt, criterion, loader = made
        else:
            model, opt, loader = made
    else:
        criterion = torch.nn.CrossEntropyLoss()

    print(json.dumps({"event": "start", "mode": args.mode, "train_images": n,
                      "steps_per_epoch": steps, "sampling_rate": 1 / steps if engine else None,
                      "noise_multiplier": args.noise_multiplier, "clip": args.clip,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}), flush=True)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for step, (x, y) in enumerate(loader):
            for group in opt.param_groups:
                group["lr"] = learning_rate(args.schedule, args.lr, epoch, epoch * steps + step,
                                            steps * args.epochs)
            opt.zero_grad()
            logits = model(x)
            loss = criterion(logits, y)
            loss.backward()
            opt.step()
            seen += len(y)
            if len(y):
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
        seconds = time.perf_counter() - t0
        test_loss, test_accuracy = evaluate(model, test_images, test_labels)
        eps = engine.get_epsilon(args.delta) if engine else None
        print(json.dumps({"event": "epoch", "epoch": epoch + 1, "loss": loss_sum / max(seen, 1),
                          "accuracy": correct / max(seen, 1), "images": seen,
                          "images_per_sec": seen / seconds, "seconds": seconds,
                          "test_loss": test_loss, "test_accuracy": test_accuracy,
                          "epsilon": eps}), flush=True)
    test_loss, test_accuracy = evaluate(model, test_images, test_labels)
    print(json.dumps({"event": "done", "test_accuracy": test_accuracy, "test_loss": test_loss,
                      "epsilon": engine.get_epsilon(args.delta) if engine else None,
                      "seconds": time.perf_counter() - started}), flush=True)


if __name__ == "__main__":
    main()
