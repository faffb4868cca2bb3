"""The `medchain` command line. Every command takes --json for machine-readable output."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from urllib.request import urlopen

from node.crypto.keys import Identity

DEFAULT_NODE = "http://127.0.0.1:8545"


def _out(args: argparse.Namespace, obj: dict, text: str) -> None:
    print(json.dumps(obj, indent=1) if args.json else text)


def cmd_keygen(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to overwrite", file=sys.stderr)
        return 2
    ident = Identity.generate()
    ident.save(out)
    _out(args, {"file": str(out), "address": ident.address.hex(), "public_key": ident.public_key.hex()},
         f"wrote {out} (mode 0600)\naddress    {ident.address.hex()}\npublic key {ident.public_key.hex()}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from node.genesis import init_home, new_chain_id, parse_issuer
    apis = [f"{args.host}:{args.base_port + i}" for i in range(args.validators)]
    p2p = [f"{args.host}:{args.p2p_base_port + i}" for i in range(args.validators)] if args.validators > 1 else None
    dirs = init_home(args.dir, args.chain_id or new_chain_id(), apis, int(time.time() * 1000), p2p=p2p,
                     issuers=tuple(parse_issuer(i) for i in args.issuer))
    if args.private_network:
        from node.p2p import swarmkey
        key = swarmkey.new_key()
        for d in dirs:
            swarmkey.write(d, key)
    _out(args, {"homes": [str(d) for d in dirs], "apis": apis},
         "\n".join(f"validator {i}: home {d}  api http://{a}" for i, (d, a) in enumerate(zip(dirs, apis, strict=True))))
    return 0


def cmd_node(args: argparse.Namespace) -> int:
    """Exit 2 for what a restart cannot mend (no or a bad configuration, genesis or key file: the
    service unit does not restart on it), else what the validator exits with."""
    from node.config import ConfigError, apply_environment, resolve
    from node.crypto.keys import Identity
    from node.files import hold_home
    from node.genesis import load_checked
    from node.run import main as run_main
    try:
        settings = resolve(args)  # flags, then environment, then --config FILE (node/config.py)
        assert settings.home is not None
        if not (settings.home / "genesis.json").exists():
            raise ConfigError(f"{settings.home} has no genesis.json: run `medchain init --dir DIR` (one host) or "
                              "`medchain operator install-genesis` first")
        gen = load_checked(settings.home / "genesis.json")  # its recorded hash, every field
        gen.index_of(Identity.load(settings.home / "node_key.json").public_key)  # a validator of this genesis
        hold_home(settings.home)  # held until the process exits: no restore into a running validator's home
        apply_environment(settings)
    except (ValueError, OSError, KeyError) as exc:  # ConfigError is a ValueError
        print(f"medchain node: {exc}", file=sys.stderr)
        return 2
    return run_main(settings)


def cmd_verify(args: argparse.Namespace) -> int:
    from node.genesis import load_checked
    from node.verify import verify_ledger
    home = Path(args.home)
    gen = load_checked(Path(args.genesis) if args.genesis else home / "genesis.json")  # its recorded hash too
    rep = verify_ledger(home / "ledger" if (home / "ledger").exists() else home, gen)
    since = (f" from the checkpoint at block {rep.base} (no blocks below it here; transactions not "
             "replayed, stored state checked against the certified head)") if rep.base else ""
    _out(args, {"ok": rep.ok, "height": rep.height, "base": rep.base, "transactions": rep.transactions,
                "errors": rep.errors},
         (f"OK: {rep.height} blocks, {rep.transactions} transactions: hash links, Merkle roots, "
          f"certificates and state roots all check{since}") if rep.ok else
         "FAILED:\n" + "\n".join(f"  {e}" for e in rep.errors))
    return 0 if rep.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from devices.patient.client import NodeClient

    async def go() -> dict:
        async with NodeClient(args.node) as c:
            return await c.status()
    st = asyncio.run(go())
    _out(args, st, "\n".join(f"{k:16} {v}" for k, v in st.items()))
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from devices.net import devnet
    return devnet.run(args.validators, Path(args.dir) if args.dir else None, args.p2p, args.base_port,
                      args.private_network, args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from devices.net.demo import main as demo_main
    return demo_main(args.windows, args.validators, args.seconds, args.phones)


def cmd_loadtest(args: argparse.Namespace) -> int:
    import tempfile

    from devices import aio
    from devices.load.follow import describe
    from devices.load.loadgen import run_load
    from devices.net.localnet import ONE_ADDRESS_FLEET, make_network, supervised
    from node.genesis import Genesis, Params, load_checked

    def go(urls: list[str], genesis: Genesis | None) -> dict:
        return aio.run(run_load(urls, args.senders, args.per_sender, args.batch, args.lanes,
                                  kind=args.kind, rate=args.rate, genesis=genesis)).as_dict()

    from devices.load.floor import floor_line, measure_floor
    floor_us = measure_floor()
    if not args.json:
        print(floor_line(floor_us), flush=True)
    if args.node:
        res = go(args.node, load_checked(Path(args.genesis)) if args.genesis else None)
    else:
        with tempfile.TemporaryDirectory(prefix="medchain-load-") as tmp:
            nodes = make_network(Path(tmp), args.validators, p2p_mode=args.p2p,
                                 params=Params(sender_rate=1e6, sender_burst=1e6, **ONE_ADDRESS_FLEET))
            with supervised(nodes):  # as `medchain devnet`: no validator outlives this command
                c0 = [n.cpu_seconds() for n in nodes]
                res = go([n.url for n in nodes], Genesis.load(nodes[0].home / "genesis.json"))
                res["validator_cpu_s"] = [round(n.cpu_seconds() - c, 2) for n, c in zip(nodes, c0, strict=True)]
                stats = [json.loads(urlopen(n.url + "/v1/status").read()) for n in nodes]
                res["p2p_messages_out"] = sum(s["p2p_messages_out"] for s in stats)
        if res["blocks"] > 0:
            res["messages_per_block"] = round(res["p2p_messages_out"] / res["blocks"], 1)
            res["cpu_s_per_block"] = round(sum(res["validator_cpu_s"]) / res["blocks"], 3)
        if res["committed"]:
            per = sum(res["validator_cpu_s"]) / len(res["validator_cpu_s"]) / res["committed"] * 1e6
            res["validator_cpu_us_per_tx"] = round(per, 1)
    res["floor_us"] = floor_us
    lat = res["latency_ms"]
    text = (f"committed {res['committed']}/{res['submitted']} in {res['seconds']:.2f} s: "
            f"{res['tps']:.0f} tx/s over {res['blocks']} blocks ({describe(res['blocks_proven'], res['blocks_refused'])}); "
            f"refused {res['refused']}\n"
            f"commit latency ms: p50 {lat['p50']:.0f}  p95 {lat['p95']:.0f}  p99 {lat['p99']:.0f}  max {lat['max']:.0f}")
    if "validator_cpu_s" in res:
        text += f"\nvalidator CPU s (whole run, preparation included): {res['validator_cpu_s']}"
    if "messages_per_block" in res:
        text += f"\np2p messages per block {res['messages_per_block']}, CPU s per block {res['cpu_s_per_block']}"
    if "validator_cpu_us_per_tx" in res:
        ratio = f" = {res['validator_cpu_us_per_tx'] / floor_us:.1f}x the floor" if floor_us else ""
        text += f"\nvalidator CPU per committed tx per validator: {res['validator_cpu_us_per_tx']:.0f} us{ratio}"
    _out(args, res, text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from devices.load.benchmark import main as bench_main
    return bench_main(args, sys.argv[1:])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medchain", description="Patient-owned wearable health data on a PBFT chain.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    p.add_argument("--log-json", action="store_true",
                   help="structured logs: one JSON object per line (also MEDCHAIN_LOG_FORMAT=json)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def add(name: str, fn, help_: str) -> argparse.ArgumentParser:  # noqa: ANN001
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("keygen", cmd_keygen, "Create a key file (secp256k1 signing key, X25519 sealing key), mode 0600.")
    sp.add_argument("--out", required=True, help="key file to write")
    sp.add_argument("--force", action="store_true", help="overwrite an existing file")

    sp = add("init", cmd_init, "Write validator homes (keys + shared genesis) for a local network.")
    sp.add_argument("--dir", required=True, help="parent directory; creates node0, node1, ...")
    sp.add_argument("--validators", type=int, default=1, help="number of validators (n = 3f+1)")
    sp.add_argument("--chain-id", default=None,
                    help="the network's id, signed by every transaction (default: a new random one, so no two networks share it)")
    sp.add_argument("--host", default="127.0.0.1")
    sp.add_argument("--base-port", type=int, default=8545, help="API port of validator 0; others count up")
    sp.add_argument("--p2p-base-port", type=int, default=9545, help="libp2p port of validator 0; others count up")
    sp.add_argument("--private-network", action="store_true",
                    help="also write a shared libp2p private-network key (HOME/swarm.key) into every home")
    sp.add_argument("--issuer", action="append", default=[], metavar="NAME=PUBLIC_KEY",
                    help="an organisation whose clinician credentials allow break-glass reads (its secp256k1 "
                         "public key, hex, e.g. from `medchain keygen`); repeatable; none: nobody may break the glass")

    sp = add("devnet", cmd_devnet, "Run a local network, each validator its own process on 127.0.0.1, until Ctrl-C.")
    sp.add_argument("--validators", type=int, default=4, help="n = 3f+1 validators")
    sp.add_argument("--dir", help="keep the homes here (default: a temporary directory)")
    sp.add_argument("--p2p", choices=["direct", "gossipsub"], default="direct", help="how PBFT messages travel")
    sp.add_argument("--private-network", action="store_true", help="validators share a libp2p pre-shared key")
    sp.add_argument("--base-port", type=int, default=8545,
                    help="API port of validator 0 (others count up; libp2p ports are 1000 higher); 0 picks free ports")

    sp = add("node", cmd_node, "Run one validator from its home directory until SIGTERM or Ctrl-C.")
    sp.add_argument("--config", help="node configuration file (TOML; deploy/node.toml); flags override it")
    sp.add_argument("--home", help="the validator's home (or `home` in the configuration file)")
    sp.add_argument("--host", help="API listen host (default: from the genesis)")
    sp.add_argument("--port", type=int, help="API listen port (default: from the genesis)")
    sp.add_argument("--p2p-listen", metavar="HOST:PORT", help="libp2p listen address (default: the advertised one)")
    sp.add_argument("--p2p-mode", choices=["direct", "gossipsub"], help="how PBFT messages travel (default: direct)")
    sp.add_argument("--metrics-listen", metavar="HOST:PORT", help="also serve /metrics alone on this address")
    sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    sp.add_argument("--ready-file", help="write the API URL here once serving")
    sp.add_argument("--ipfs-peer", action="append", default=None, metavar="MULTIADDR",
                    help="an external IPFS peer (kubo, Helia, a cluster; /p2p/<id> included) to exchange blobs "
                         "with over bitswap (repeatable)")

    sp = add("verify", cmd_verify, "Check a ledger offline: hash links, Merkle roots, certificates, state roots.")
    sp.add_argument("--home", required=True, help="validator home (or a ledger directory with --genesis)")
    sp.add_argument("--genesis", help="genesis.json (default: HOME/genesis.json)")

    sp = add("status", cmd_status, "Show a validator's status.")
    sp.add_argument("--node", default=DEFAULT_NODE)

    sp = add("demo", cmd_demo, "Run the paper's flow on a local network with emulated wearables, then a summary.")
    sp.add_argument("--windows", type=int, default=4, help="5-minute windows of readings per wearable in the flow")
    sp.add_argument("--validators", type=int, default=4)
    sp.add_argument("--seconds", type=float, default=30.0, help="how long the phone fleet runs")
    sp.add_argument("--phones", type=int, default=64, help="phones in the fleet, five wearables each")

    sp = add("loadtest", cmd_loadtest, "Pre-signed data-write load: committed tx/s and commit latency.")
    sp.add_argument("--node", action="append", help="target these validators (repeat; default: start a local network)")
    sp.add_argument("--validators", type=int, default=1)
    sp.add_argument("--p2p", choices=["direct", "gossipsub"], default="direct")
    sp.add_argument("--kind", choices=["write", "profile"], default="write",
                    help="data writes (one blob upload each, in preparation) or profile updates")
    sp.add_argument("--senders", type=int, default=200)
    sp.add_argument("--per-sender", type=int, default=50)
    sp.add_argument("--batch", type=int, default=500, help="transactions per POST /v1/txs")
    sp.add_argument("--lanes", type=int, default=2, help="concurrent submitting connections per validator")
    sp.add_argument("--rate", type=float, default=0.0, help="offered load in tx/s, open loop (0: as fast as possible)")
    sp.add_argument("--genesis", help="with --node: the network's genesis.json; commits then count only in blocks "
                    "whose certificate and transaction ids check against its keys (a local network's own is always used)")

    sp = add("bench", cmd_bench, "Wearable-fleet workloads on a devnet: JSON report and PNG plot in bench/results/.")
    from devices.load.benchmark import add_arguments as bench_arguments
    bench_arguments(sp)

    from devices.patient import cli_clients
    cli_clients.register(sub, add)
    from node import ipfs_cli
    ipfs_cli.register(sub, add)
    from devices.net import faultharness
    faultharness.register(sub, add)
    from node import operator
    operator.register(sub, add)
    from node import snapshot
    snapshot.register(sub, add)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from node.logs import configure
    if args.log_json:
        os.environ["MEDCHAIN_LOG_FORMAT"] = "json"  # validator processes started from here inherit it
    configure(logging.INFO if getattr(args, "verbose", False) or args.cmd == "node" else logging.WARNING, args.log_json)
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a clear one-line error for every failure a user can cause
        if not isinstance(exc, _user_errors()):
            raise
        what = f"{args.cmd} {getattr(args, 'action', '') or ''}".strip()
        msg = str(exc) or type(exc).__name__
        if getattr(args, "json", False):
            print(json.dumps({"error": msg, "kind": type(exc).__name__, "command": what}))
        print(f"medchain {what}: {msg}", file=sys.stderr)
        return 1


def _user_errors() -> tuple[type[BaseException], ...]:
    """Refusals and failures a user meets (a denied read, a refused transaction, an unreachable or
    lying validator, a bad key file): one line and exit 1, never a traceback."""
    import aiohttp

    from devices.patient.client import ApiError
    from devices.patient.commits import TxRejected
    from devices.patient.phone import RotationPending
    from devices.patient.staff import AccessDenied
    from devices.patient.verified_reads import NoHonestAnswer
    from node.ledger import LedgerError
    return (ApiError, TxRejected, AccessDenied, NoHonestAnswer, RotationPending, LedgerError, aiohttp.ClientError,
            TimeoutError, ValueError,
            PermissionError, FileNotFoundError, ConnectionError, OSError)


if __name__ == "__main__":
    sys.exit(main())
