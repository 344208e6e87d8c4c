#!/usr/bin/env python3
"""The reference CNN (REFERENCE_CNN.md) in PyTorch, to check fl-core's burn model against.

Reads a model file that `fl_core::model` saved (safetensors, PyTorch names and layouts) with
`load_state_dict(strict=True)`, feeds it CIFAR-10 binary records normalised the same way, and:

  accuracy  prints loss and accuracy on a CIFAR-10 binary file
  logits    writes the logits of the first N images as JSON ({"logits": [[...], ...]})
  train     runs full-batch SGD steps (PyTorch SGD, dampening 0, weight decay, FedProx term)
            on the first N images and saves the resulting model as safetensors

Needs torch and safetensors (pip install torch safetensors). Used by
fl-core/tests/model_parity.rs; see experiments/pytorch/README.md.
"""

import argparse
import json
import sys

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

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
