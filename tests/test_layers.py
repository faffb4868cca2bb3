"""The shape of the code (DESIGN.md section 8), read from its imports: no import circles (type-only
and function-level imports count: a circle is a circle for a reader too), the sans-IO core
imports no IO library and no adapter, and the validator library does not reach into devices/.
Read from its attribute accesses: no module touches another object's private (`_x`) members.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node", "devices", "bench")
# pure logic: driven by tests and by adapters, never touching sockets, threads, trio or LMDB
SANS_IO = ("node.wire", "node.tx", "node.state", "node.consensus", "node.crypto", "node.merkle", "node.block",
           "node.proof", "node.execution", "node.sidecar", "node.ipfs.cid", "node.ipfs.unixfs",
           "node.ipfs.bitswap", "node.ipfs.bitswap_pb", "node.checkpoint")
IO_LIBS = {"asyncio", "trio", "lmdb", "aiohttp", "libp2p", "socket", "threading", "subprocess", "uvloop"}
ADAPTERS = ("node.validator", "node.api", "node.p2p", "node.ledger", "node.ipfs.blockstore", "node.run",
            "node.replication", "node.sync", "node.commit", "node.admission", "node.pipeline")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = p.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            mods[name] = p
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> tuple[set[str], set[str]]:
    """(project modules, top-level external names) that `name` imports anywhere in its source."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    inner, outer = set(), set()

    def add(candidate: str) -> None:
        n = candidate
        while n and n not in mods:
            n = n.rpartition(".")[0]
        if n:
            if n != name:
                inner.add(n)
        else:
            outer.add(candidate.split(".")[0])

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for a in node.names:
                add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    return inner, outer


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    mods = _modules()
    inner, outer = {}, {}
    for name, path in mods.items():
        inner[name], outer[name] = _imports(name, path, mods)
    return inner, outer


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    inner, _ = _graph()
    assert _cycles(inner) == []


def test_the_sans_io_core_imports_no_io_and_no_adapter():
    inner, outer = _graph()
    bad = {m: sorted((outer[m] & IO_LIBS) | {d for d in inner[m] if _within(d, ADAPTERS)})
           for m in inner if _within(m, SANS_IO)}
    assert {m: b for m, b in bad.items() if b} == {}


def test_the_validator_library_does_not_import_devices():
    inner, _ = _graph()
    # the CLI is the application: it starts devices' tools (demo, load, bench) by name
    bad = {m: sorted(d for d in deps if d.startswith("devices"))
           for m, deps in inner.items() if m.startswith("node") and m != "node.cli"}
    assert {m: b for m, b in bad.items() if b} == {}


# private members the code may reach: standard-library names with no public spelling, and what the p2p
# adapter does to py-libp2p's objects (and between its own two halves), which is that adapter's to tidy
PRIVATE_ALLOWED = {
    "argparse._SubParsersAction",  # the type of add_subparsers(): argparse has no public name for it
    "os._exit",  # the documented way to leave without running cleanup (node/run.py: a stop that overran)
    "queue._queue", "router._handle_dropped_rpc",  # node/p2p/_gossip.py: py-libp2p's pubsub internals
    "self.side._conn_opened", "self.side._conn_lost",  # node/p2p/_trio_side.py -> its loop side
}

NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}  # public, underscore or not


def _private_reaches(source: str) -> list[str]:
    """`x._name` where x is not self or cls: one object reaching into another's private members."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
            continue
        if (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) or node.attr in NAMEDTUPLE_API:
            continue
        out.append(ast.unparse(node))
    return out


def test_the_private_reach_finder():
    src = ("self._a = 1\ncls._b()\nv._executed.clear()\nself.replica._sign(x)\nt.__class__\nx.public\n"
           "g._replace(a=1)\n")
    assert sorted(_private_reaches(src)) == ["self.replica._sign", "v._executed"]


def test_no_module_touches_another_objects_private_members():
    bad = {}
    for name, path in _modules().items():
        found = sorted(set(_private_reaches(path.read_text())) - PRIVATE_ALLOWED)
        if found:
            bad[name] = found
    assert bad == {}
