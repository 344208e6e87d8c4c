#!/usr/bin/env python3
"""The reference CNN (REFERENCE_CNN.md) in PyTorch, to check fl-core's burn model against.

Reads a model file that `fl_core::model` saved (safetensors, PyTorch names and layouts) with
`load_state_dict(strict=True)`, feeds it CIFAR-10 binary records normalised the same way, and:

  accuracy  prints loss and accuracy on a CIFAR-10 binary file
  logits    writes the logits of the first N images as JSON ({"logits": [[...], ...]})
  train     runs full-batch SGD steps (PyTorch SGD, dampening 0, weight decay, FedProx term)
            on the first N images and saves the resulting model as safetensors
  baseline  centralized training on a CIFAR-10 directory from a given initial model, with
            the hyper-parameters and augmentation of `fl baseline`; a JSON line per epoch
  fedavg    plain FedAvg over the shards of a split (`fl data partition --indices`), every
            client every round from the global model, sample-weighted; a JSON line per round
  dp-step   DP-SGD steps on the first N images taken whole (q = 1) and no noise: each
            example's gradient clipped to C' = C (1 - 2^-10) by min(1, C' / (norm + 1e-6)),
            summed, divided by N, then SGD with momentum and weight decay; saves the model
  per-example
            the gradient of each of the first N images' own cross-entropy loss, for every
            parameter tensor (torch.func: vmap of grad), saved as safetensors with the
            parameter names and a leading example dimension

Needs torch and safetensors (pip install torch safetensors). Used by
fl-core/tests/model/parity.rs; see experiments/pytorch/README.md.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

# The CIFAR-10 training set's statistics (REFERENCE_CNN.md); fl-core records them in the
# model file's metadata as input_mean / input_std.
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
RECORD = 1 + 3 * 32 * 32


class FedAvgCNN(nn.Module):
    """conv5x5 3->64 pad 2, ReLU, maxpool 3/2/1, conv5x5 64->64 pad 2, ReLU, maxpool 3/2/1,
    4096->384 ReLU, 384->192 ReLU, 192->10."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.fc1 = nn.Linear(64 * 8 * 8, 384)
        self.fc2 = nn.Linear(384, 192)
        self.fc3 = nn.Linear(192, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 3, stride=2, padding=1)
        x = F.max_pool2d(F.relu(self.conv2(x)), 3, stride=2, padding=1)
        x = torch.flatten(x, 1)  # (C, H, W) order
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def load_model(path):
    """The model in `path`, loaded strictly (every tensor present, no extra, same shapes)."""
    model = FedAvgCNN()
    model.load_state_dict(load_file(path), strict=True)
    return model


def load_cifar(path, limit=None):
    """Normalised images [N, 3, 32, 32] and labels [N] from CIFAR-10 binary records."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) % RECORD:
        sys.exit(f"{path}: {len(raw)} bytes are not a whole number of {RECORD}-byte records")
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, RECORD)
    if limit is not None:
        records = records[:limit]
    labels = records[:, 0].long()
    images = records[:, 1:].reshape(-1, 3, 32, 32).float() / 255.0
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)
    return (images - mean) / std, labels


def cmd_accuracy(args):
    model = load_model(args.model).eval()
    images, labels = load_cifar(args.data, args.limit)
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), 256):
            logits = model(images[start:start + 256])
            target = labels[start:start + 256]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    n = len(labels)
    print(json.dumps({"images": n, "loss": loss / n, "accuracy": correct / n}))


def cmd_logits(args):
    model = load_model(args.model).eval()
    images, labels = load_cifar(args.data, args.n)
    with torch.no_grad():
        logits = model(images)
    out = {"logits": logits.tolist(), "labels": labels.tolist()}
    with open(args.out, "w") as f:
        json.dump(out, f)


def cmd_train(args):
    model = load_model(args.model).train()
    anchor = [p.detach().clone() for p in model.parameters()]
    images, labels = load_cifar(args.data, args.n)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          dampening=0.0, weight_decay=args.weight_decay)
    for _ in range(args.steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        if args.mu > 0:
            prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
            loss = loss + args.mu / 2 * prox
        loss.backward()
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out,
              metadata={"format": "pt"})


def cmd_per_example(args):
    from torch.func import functional_call, grad, vmap

    model = load_model(args.model)
    images, labels = load_cifar(args.data, args.n)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_of_one(p, image, label):
        logits = functional_call(model, p, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, images, labels)
    save_file({k: v.contiguous() for k, v in grads.items()}, args.out)


def cmd_dp_step(args):
    from torch.func import functional_call, grad, vmap

    model = load_model(args.model)
    images, labels = load_cifar(args.data, args.n)
    clip = args.clip * (1.0 - 1.0 / 1024.0)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          dampening=0.0, weight_decay=args.weight_decay)

    def loss_of_one(p, image, label):
        logits = functional_call(model, p, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    for _ in range(args.steps):
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = vmap(grad(loss_of_one), in_dims=(None, 0, 0))(params, images, labels)
        norms = torch.sqrt(sum((g.reshape(len(labels), -1) ** 2).sum(1) for g in grads.values()))
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        opt.zero_grad()
        for name, p in model.named_parameters():
            g = grads[name]
            p.grad = (g * factors.reshape(-1, *([1] * (g.dim() - 1)))).sum(0) / len(labels)
        opt.step()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out,
              metadata={"format": "pt"})


def load_raw(path):
    """Raw uint8 images [N, 3, 32, 32] and labels [N] of a CIFAR-10 binary file."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) % RECORD:
        sys.exit(f"{path}: {len(raw)} bytes are not a whole number of {RECORD}-byte records")
    records = torch.frombuffer(bytearray(raw), dtype=torch.uint8).reshape(-1, RECORD)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].long()


def load_train_raw(data):
    """The training set of a CIFAR-10 binary directory: data_batch_1.bin .. data_batch_5.bin in
    order, as `fl_core`'s reader concatenates them; exits naming the first one missing."""
    names = [f"data_batch_{i}.bin" for i in range(1, 6)]
    for n in names:
        if not os.path.exists(os.path.join(data, n)):
            sys.exit(f"{data} has no {n} (a CIFAR-10 binary directory is needed)")
    parts = [load_raw(os.path.join(data, n)) for n in names]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def normalise(raw):
    mean = torch.tensor(MEAN).reshape(1, 3, 1, 1)
    std = torch.tensor(STD).reshape(1, 3, 1, 1)
    return (raw.float() / 255.0 - mean) / std


def augment(raw, gen):
    """torchvision's RandomCrop(32, padding=4) and RandomHorizontalFlip() on a uint8 batch."""
    n = raw.shape[0]
    padded = F.pad(raw, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen)
    dy = torch.randint(0, 9, (n,), generator=gen)
    flip = torch.rand(n, generator=gen) < 0.5
    out = torch.empty_like(raw)
    for i in range(n):
        crop = padded[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
        out[i] = crop.flip(2) if flip[i] else crop
    return out


def learning_rate(schedule, base, epoch, step, total_steps):
    """The rate of `fl baseline --schedule` (constant, cosine[:MIN], step:EVERY:GAMMA)."""
    parts = schedule.split(":")
    if parts[0] == "constant":
        return base
    if parts[0] == "cosine":
        low = float(parts[1]) if len(parts) > 1 else 0.0
        return low + (base - low) * (1 + math.cos(math.pi * step / max(total_steps, 1))) / 2
    if parts[0] == "step":
        return base * float(parts[2]) ** (epoch // int(parts[1]))
    sys.exit(f"unknown schedule {schedule}")


def cmd_baseline(args):
    model = load_model(args.model).train()
    train_raw, train_labels = load_train_raw(args.data)
    test_raw, test_labels = load_raw(os.path.join(args.data, "test_batch.bin"))
    test_images = normalise(test_raw)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                          dampening=0.0, weight_decay=args.weight_decay)
    gen = torch.Generator().manual_seed(args.seed)
    n = len(train_labels)
    steps = (n + args.batch - 1) // args.batch
    started = time.perf_counter()
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.arange(n) if args.no_shuffle else torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for step in range(steps):
            idx = order[step * args.batch:(step + 1) * args.batch]
            raw = train_raw[idx]
            if not args.no_augment:
                raw = augment(raw, gen)
            images, labels = normalise(raw), train_labels[idx]
            for group in opt.param_groups:
                group["lr"] = learning_rate(args.schedule, args.lr, epoch, epoch * steps + step,
                                            steps * args.epochs)
            opt.zero_grad()
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
        seconds = time.perf_counter() - t0
        test_loss, test_accuracy = evaluate(model, test_images, test_labels)
        print(json.dumps({"event": "epoch", "epoch": epoch + 1, "loss": loss_sum / n,
                          "accuracy": correct / n, "images_per_sec": n / seconds,
                          "seconds": seconds, "test_loss": test_loss,
                          "test_accuracy": test_accuracy}), flush=True)
    test_loss, test_accuracy = evaluate(model, test_images, test_labels)
    print(json.dumps({"event": "done", "test_accuracy": test_accuracy, "test_loss": test_loss,
                      "seconds": time.perf_counter() - started,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def round_rate(schedule, base, rnd, rounds):
    """The local rate of round `rnd` (1-based) of `rounds`, as a task's round schedule sets it."""
    if schedule == "constant":
        return base
    if schedule == "cosine":
        t = min(max((rnd - 0.5) / max(rounds, 1), 0.0), 1.0)
        return base * (1 + math.cos(math.pi * t)) / 2
    sys.exit(f"unknown round schedule {schedule}")


def read_split(path, images):
    """The clients' index lists of a split file, checked against `images` training images."""
    try:
        with open(path) as f:
            split = json.load(f)
        clients = [[int(i) for i in c] for c in split["clients"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.exit(f"{os.path.basename(path)}: not a split file ({e.__class__.__name__}: {e})")
    if isinstance(split.get("images"), int) and split["images"] > images:
        sys.exit(f"{os.path.basename(path)} splits {split['images']} images; the data has {images}")
    for k, c in enumerate(clients):
        if not c or min(c) < 0 or max(c) >= images:
            sys.exit(f"{os.path.basename(path)}: client {k} is empty or names an image outside "
                     f"0..{images - 1}")
    return [torch.tensor(c, dtype=torch.long) for c in clients]


def cmd_fedavg(args):
    """Plain FedAvg (McMahan et al. 2017) over the clients of a split that `fl data partition
    --indices` (or the experiments) wrote: every client trains from the round's global model
    with a fresh SGD optimizer, and the global model becomes the sample-weighted mean of the
    clients' models. A client whose loss or parameters turn non-finite leaves the federation,
    as a node whose training diverges leaves a task."""
    if args.rounds < 1 or args.epochs < 1 or args.batch < 1:
        sys.exit("--rounds, --epochs and --batch must be at least 1")
    model = load_model(args.model).train()
    train_raw, train_labels = load_train_raw(args.data)
    test_raw, test_labels = load_raw(os.path.join(args.data, "test_batch.bin"))
    test_images = normalise(test_raw)
    clients = read_split(args.split, len(train_labels))
    gen = torch.Generator().manual_seed(args.seed)
    global_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gone = set()
    started = time.perf_counter()
    for rnd in range(1, args.rounds + 1):
        t0 = time.perf_counter()
        lr = round_rate(args.schedule, args.lr, rnd, args.rounds)
        total, summed, diverged = 0, None, 0
        for k, client in enumerate(clients):
            if k in gone:
                continue
            model.load_state_dict(global_state)
            model.train()
            anchor = [p.detach().clone() for p in model.parameters()]
            opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                                  dampening=0.0, weight_decay=args.weight_decay)
            finite = True
            for _ in range(args.epochs):
                order = client[torch.randperm(len(client), generator=gen)]
                for start in range(0, len(order), args.batch):
                    idx = order[start:start + args.batch]
                    raw = train_raw[idx]
                    if not args.no_augment:
                        raw = augment(raw, gen)
                    opt.zero_grad()
                    loss = F.cross_entropy(model(normalise(raw)), train_labels[idx])
                    if args.mu > 0:
                        prox = sum(((p - a) ** 2).sum()
                                   for p, a in zip(model.parameters(), anchor))
                        loss = loss + args.mu / 2 * prox
                    if not torch.isfinite(loss):
                        finite = False
                        break
                    loss.backward()
                    opt.step()
                if not finite:
                    break
            state = model.state_dict()
            if not finite or not all(torch.isfinite(v).all() for v in state.values()):
                gone.add(k)
                diverged += 1
                continue
            n = len(client)
            if summed is None:
                summed = {name: v.detach().double() * n for name, v in state.items()}
            else:
                for name, v in state.items():
                    summed[name] += v.detach().double() * n
            total += n
        if summed is not None:
            global_state = {k: (v / total).float() for k, v in summed.items()}
        model.load_state_dict(global_state)
        test_loss, test_accuracy = evaluate(model, test_images, test_labels)
        print(json.dumps({"event": "round", "round": rnd, "learning_rate": lr,
                          "clients": len(clients) - len(gone), "diverged": diverged,
                          "seconds": time.perf_counter() - t0, "test_loss": test_loss,
                          "test_accuracy": test_accuracy}), flush=True)
    print(json.dumps({"event": "done", "test_accuracy": test_accuracy, "test_loss": test_loss,
                      "seconds": time.perf_counter() - started,
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


def evaluate(model, images, labels):
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(labels), 256):
            logits = model(images[start:start + 256])
            target = labels[start:start + 256]
            loss += F.cross_entropy(logits, target, reduction="sum").item()
            correct += (logits.argmax(1) == target).sum().item()
    return loss / len(labels), correct / len(labels)


def main():
    torch.use_deterministic_algorithms(True)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    a = sub.add_parser("accuracy", help="loss and accuracy on a CIFAR-10 binary file")
    a.add_argument("model")
    a.add_argument("data")
    a.add_argument("--limit", type=int, default=None, help="first N images only")
    a.set_defaults(func=cmd_accuracy)

    lg = sub.add_parser("logits", help="logits of the first N images as JSON")
    lg.add_argument("model")
    lg.add_argument("data")
    lg.add_argument("--n", type=int, default=16)
    lg.add_argument("--out", required=True)
    lg.set_defaults(func=cmd_logits)

    t = sub.add_parser("train", help="full-batch SGD steps on the first N images")
    t.add_argument("model")
    t.add_argument("data")
    t.add_argument("--n", type=int, default=8)
    t.add_argument("--steps", type=int, default=3)
    t.add_argument("--lr", type=float, default=0.05)
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--mu", type=float, default=0.0, help="FedProx proximal term")
    t.add_argument("--out", required=True)
    t.set_defaults(func=cmd_train)

    d = sub.add_parser("dp-step", help="DP-SGD steps with q = 1 and no noise on the first N images")
    d.add_argument("model")
    d.add_argument("data")
    d.add_argument("--n", type=int, default=32)
    d.add_argument("--steps", type=int, default=3)
    d.add_argument("--clip", type=float, default=1.0)
    d.add_argument("--lr", type=float, default=0.5)
    d.add_argument("--momentum", type=float, default=0.9)
    d.add_argument("--weight-decay", type=float, default=0.0)
    d.add_argument("--out", required=True)
    d.set_defaults(func=cmd_dp_step)

    pe = sub.add_parser("per-example", help="per-example gradients of the first N images")
    pe.add_argument("model")
    pe.add_argument("data")
    pe.add_argument("--n", type=int, default=32)
    pe.add_argument("--out", required=True)
    pe.set_defaults(func=cmd_per_example)

    b = sub.add_parser("baseline", help="centralized training, as `fl baseline`")
    b.add_argument("model", help="initial model (safetensors), e.g. `fl ipfs get` of the init CID")
    b.add_argument("data", help="CIFAR-10 binary directory (data_batch_*.bin, test_batch.bin)")
    b.add_argument("--epochs", type=int, default=10)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--lr", type=float, default=0.05)
    b.add_argument("--schedule", default="constant")
    b.add_argument("--momentum", type=float, default=0.9)
    b.add_argument("--weight-decay", type=float, default=5e-4)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--no-augment", action="store_true")
    b.add_argument("--no-shuffle", action="store_true")
    b.set_defaults(func=cmd_baseline)

    fa = sub.add_parser("fedavg", help="plain FedAvg over a split's clients, as `fl simulate`")
    fa.add_argument("model", help="initial model (safetensors)")
    fa.add_argument("data", help="CIFAR-10 binary directory (data_batch_*.bin, test_batch.bin)")
    fa.add_argument("split", help='JSON {"clients": [[image index, ...], ...]}')
    fa.add_argument("--rounds", type=int, default=10)
    fa.add_argument("--epochs", type=int, default=1)
    fa.add_argument("--batch", type=int, default=32)
    fa.add_argument("--lr", type=float, default=0.05)
    fa.add_argument("--schedule", default="cosine", choices=["constant", "cosine"],
                    help="how the rate falls over the rounds")
    fa.add_argument("--momentum", type=float, default=0.9)
    fa.add_argument("--weight-decay", type=float, default=5e-4)
    fa.add_argument("--mu", type=float, default=0.0, help="FedProx proximal term")
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--no-augment", action="store_true")
    fa.set_defaults(func=cmd_fedavg)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
