#!/usr/bin/env python3
"""The standard population benchmark in Flower, beside `fl simulate --clients K --per-round M`.

Flower's simulation engine (`flwr.simulation.run_simulation`, the Ray backend) runs K virtual
clients (supernodes), of which the server's FedAvg (or FedProx) strategy samples M a round
(fraction_train = M / K), or, given SAMPLE.json, trains the clients a run of ours sampled
in each round (the strategy still picks M supernodes; each is told which client's data to
train, so both systems train the same clients in the same rounds and differ only in their
implementations). Each sampled client trains the reference CNN in PyTorch on exactly
the images our split gave it (a split file written by `fl data partition --indices` or the
experiments: {"clients": [[image index, ...], ...]}), with the local training of
`fedavg_cnn.py fedavg` (fresh SGD with momentum and weight decay each round, augmentation,
the FedProx term when --mu > 0). The server evaluates the global model on the test set after
every round.

Prints a JSON line per round: the round, its test accuracy and loss, the round's wall time
on the server, the sampled clients' summed training seconds and which clients trained; then
a summary line.

Needs flwr[simulation] and torch (experiments/flower/requirements.txt; the experiments'
setup script installs them). Run:

  python experiments/flower/fedavg_population.py INIT.safetensors CIFAR_DIR SPLIT.json \
      --rounds 50 --per-round 10 --lr 0.01 --seed 0 [SAMPLE.json]

SAMPLE.json: {"rounds": [[client, ...], ...]}, round 1's clients first.
"""

import argparse
import json
import os
import random
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "pytorch"))
import fedavg_cnn as ref  # noqa: E402  (the model, data and training of the PyTorch anchor)

from flwr.app import (  # noqa: E402
    ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402

ARGS = None
# What each Ray worker process loads once: the training images and the clients' index lists.
_DATA = {}


def data():
    if not _DATA:
        raw, labels = ref.load_train_raw(ARGS.data)
        _DATA["raw"], _DATA["labels"] = raw, labels
        _DATA["clients"] = ref.read_split(ARGS.split, len(labels))
    return _DATA


def train_client(arrays, partition, config):
    """One sampled client's local training from the round's model; its model, examples and
    training seconds."""
    d = data()
    client = d["clients"][partition]
    model = ref.FedAvgCNN()
    model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
    model.train()
    anchor = [p.detach().clone() for p in model.parameters()]
    lr = ref.round_rate(ARGS.schedule, ARGS.lr, int(config["server-round"]), ARGS.rounds)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=ARGS.momentum, dampening=0.0,
                          weight_decay=ARGS.weight_decay)
    gen = torch.Generator().manual_seed(ARGS.seed * 1_000_003 + partition * 7919
                                        + int(config["server-round"]))
    mu = float(config.get("proximal-mu", 0.0))
    started = time.perf_counter()
    for _ in range(ARGS.epochs):
        order = client[torch.randperm(len(client), generator=gen)]
        for start in range(0, len(order), ARGS.batch):
            idx = order[start:start + ARGS.batch]
            raw = d["raw"][idx]
            if not ARGS.no_augment:
                raw = ref.augment(raw, gen)
            opt.zero_grad()
            loss = F.cross_entropy(model(ref.normalise(raw)), d["labels"][idx])
            if mu > 0:
                prox = sum(((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor))
                loss = loss + mu / 2 * prox
            loss.backward()
            opt.step()
    return model, len(client), time.perf_counter() - started


client_app = ClientApp()


@client_app.train()
def train(msg: Message, context: Context):
    config = msg.content["config"]
    # With a sample schedule the server names the client; otherwise the supernode is it.
    partition = int(config["client"]) if "client" in config else int(
        context.node_config["partition-id"])
    model, n, seconds = train_client(msg.content["arrays"], partition, msg.content["config"])
    metrics = MetricRecord({"num-examples": n, "train-seconds": seconds, "client": partition})
    content = RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


def read_sample(path, rounds, per_round, clients):
    """The clients of each round from SAMPLE.json, checked against the run's settings."""
    with open(path) as f:
        schedule = json.load(f)["rounds"]
    if len(schedule) < rounds:
        sys.exit(f"{path} has {len(schedule)} rounds, fewer than --rounds {rounds}")
    for r, chosen in enumerate(schedule[:rounds], start=1):
        if len(chosen) != per_round or len(set(chosen)) != per_round:
            sys.exit(f"{path}: round {r} names {len(chosen)} clients, not {per_round} distinct")
        if any(not isinstance(c, int) or not 0 <= c < clients for c in chosen):
            sys.exit(f"{path}: round {r} names a client outside 0..{clients}")
    return schedule


def scheduled(base, schedule):
    """`base` (FedAvg or FedProx) training the clients `schedule` names each round."""

    class Scheduled(base):
        def configure_train(self, server_round, arrays, config, grid):
            messages = list(super().configure_train(server_round, arrays, config, grid))
            chosen = schedule[server_round - 1]
            if len(messages) != len(chosen):
                raise RuntimeError(f"round {server_round}: the strategy sampled "
                                   f"{len(messages)} supernodes for {len(chosen)} clients")
            out = []
            for message, client in zip(messages, chosen):
                own = ConfigRecord(dict(message.content[self.configrecord_key]))
                own["client"] = client
                content = RecordDict({self.arrayrecord_key: arrays,
                                      self.configrecord_key: own})
                out.append(Message(content=content, message_type=MessageType.TRAIN,
                                   dst_node_id=message.metadata.dst_node_id))
            return out

    return Scheduled


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context):
    random.seed(ARGS.seed)
    test_raw, test_labels = ref.load_raw(os.path.join(ARGS.data, "test_batch.bin"))
    test_images = ref.normalise(test_raw)
    clients = len(ref.read_split(ARGS.split, 1 << 62))
    fraction = ARGS.per_round / clients
    common = dict(fraction_train=fraction, fraction_evaluate=0.0,
                  min_train_nodes=ARGS.per_round, min_available_nodes=clients,
                  min_evaluate_nodes=0)
    base, extra = (FedProx, {"proximal_mu": ARGS.mu}) if ARGS.mu > 0 else (FedAvg, {})
    if ARGS.sample:
        base = scheduled(base, read_sample(ARGS.sample, ARGS.rounds, ARGS.per_round, clients))
    strategy = base(**extra, **common)
    model = ref.load_model(ARGS.model)
    last = {"at": time.perf_counter()}
    train_seconds = {}
    started = time.perf_counter()

    def summed_training(replies, key):
        # Called by the strategy with the round's replies: the clients' training seconds.
        total = sum(float(r["metrics"]["train-seconds"]) for r in replies)
        train_seconds["last"] = total
        examples = sum(float(r["metrics"]["num-examples"]) for r in replies)
        train_seconds["clients"] = sorted(int(r["metrics"]["client"]) for r in replies)
        return MetricRecord({"train-seconds": total, "num-examples": examples})

    strategy.train_metrics_aggr_fn = summed_training

    def evaluate(server_round, arrays):
        if server_round == 0:
            last["at"] = time.perf_counter()
            return None
        now = time.perf_counter()
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, accuracy = ref.evaluate(model, test_images, test_labels)
        print(json.dumps({"event": "round", "round": server_round, "test_accuracy": accuracy,
                          "test_loss": loss, "seconds": now - last["at"],
                          "train_seconds": train_seconds.get("last", 0.0),
                          "clients": train_seconds.get("clients", [])}), flush=True)
        last["at"] = time.perf_counter()
        return MetricRecord({"accuracy": accuracy, "loss": loss})

    strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                   num_rounds=ARGS.rounds, train_config=ConfigRecord({}),
                   evaluate_fn=evaluate)
    print(json.dumps({"event": "done", "seconds": time.perf_counter() - started,
                      "flwr": __import__("flwr").__version__, "torch": torch.__version__,
                      "threads": torch.get_num_threads()}), flush=True)


def parse():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="initial model (safetensors)")
    p.add_argument("data", help="CIFAR-10 binary directory (data_batch_*.bin, test_batch.bin)")
    p.add_argument("split", help='JSON {"clients": [[image index, ...], ...]}')
    p.add_argument("sample", nargs="?", help='JSON {"rounds": [[client, ...], ...]}: the '
                   "clients each round trains (default: Flower samples them)")
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--per-round", type=int, default=10, help="clients sampled a round")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--mu", type=float, default=0.0, help="FedProx proximal term")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--cpus-per-client", type=float, default=1.0,
                   help="Ray CPUs each virtual client takes (clients at once = cores / this)")
    args = p.parse_args()
    if args.rounds < 1 or args.epochs < 1 or args.batch < 1 or args.per_round < 1:
        sys.exit("--rounds, --epochs, --batch and --per-round must be at least 1")
    return args


if __name__ == "__main__":
    ARGS = parse()
    # Ray workers import this module afresh; they read the settings from the environment.
    os.environ["FL_FLOWER_ARGS"] = json.dumps(vars(ARGS))
    clients = len(ref.read_split(ARGS.split, 1 << 62))
    if ARGS.per_round > clients:
        sys.exit(f"--per-round {ARGS.per_round} is more than the split's {clients} clients")
    if ARGS.sample:
        read_sample(ARGS.sample, ARGS.rounds, ARGS.per_round, clients)  # exits if it is wrong
    torch.set_num_threads(1)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=clients,
                   backend_config={"client_resources": {"num_cpus": ARGS.cpus_per_client,
                                                        "num_gpus": 0.0}})
elif os.environ.get("FL_FLOWER_ARGS"):
    ARGS = argparse.Namespace(**json.loads(os.environ["FL_FLOWER_ARGS"]))
