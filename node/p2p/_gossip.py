"""gossipsub for the adapter, configured against py-libp2p 0.8.1's defaults (DESIGN.md section 4).

| library default                                   | here                                        |
|---------------------------------------------------|---------------------------------------------|
| spam protection on, 10 msg/s per topic per peer   | off (limit 1e9)                             |
| heartbeat every 120 s                             | every 1 s (mesh repair and IHAVE gossip)    |
| meshsub v1.2+: IDONTWANT sent for every message   | only /meshsub/1.1.0 offered: no IDONTWANT   |
| 32-slot per-peer outbound RPC queue, silent drops | 100k slots; drops counted (gossip_dropped)  |
| 32-slot subscription channel, drops when full     | replaced by a direct hand-off (no queue)    |
| eclipse protection: 3 distinct IPs in the mesh    | off (validators may share an IP)            |
| adaptive gossip                                   | off                                         |

Messages are signed (strict signing) so the origin peer id handed to ``on_message`` is
authenticated, as it is for direct streams by noise; messages whose origin is not a validator are
dropped and counted. Pubsub refuses RPCs over 1 MiB: the adapter sends larger payloads directly.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import trio
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from node.p2p._wake import wait_for_items


class GossipSide(Protocol):
    """What the gossip channel uses of the trio side that owns it (``_trio_side.TrioSide``)."""

    host: Any  # the libp2p host
    my_id: Any  # our libp2p peer ID
    outs: dict  # the other validators, by name
    allowed_bytes: dict[bytes, str]  # peer id bytes -> validator name
    topic: str
    strict_signing: bool
    stats: dict[str, int]
    gossip_queue: deque
    deliver: Callable[[str, bytes], None]

log = logging.getLogger("medchain.p2p")

GOSSIP_QUEUE = 100_000


class _Sink:
    """Stands in for pubsub's 32-slot subscription channel (which drops when full): every
    message is handed straight to the adapter, on the trio thread, without a queue."""

    def __init__(self, fn: Callable[[Any], None]) -> None:
        self.send_nowait = fn

    async def aclose(self) -> None:
        return None

    def close(self) -> None:
        return None


class _BigQueues(dict):
    """``pubsub.peer_queues`` replacement: raises the bound of each new per-peer RpcQueue."""

    def __setitem__(self, key: Any, queue: Any) -> None:
        with contextlib.suppress(AttributeError):
            queue._queue.max_size = GOSSIP_QUEUE
        super().__setitem__(key, queue)


class GossipChannel:
    def __init__(self, side: GossipSide) -> None:
        self.side = side
        self.stats = side.stats
        self.event = trio.Event()
        self.waiting = False
        self.pubsub: Any = None
        self.my_id = side.my_id.to_bytes()

    async def start(self, stack: contextlib.AsyncExitStack) -> None:
        side = self.side
        d = max(1, min(6, len(side.outs)))
        router = GossipSub(
            protocols=[PROTOCOL_ID_V11],
            degree=d,
            degree_low=max(1, min(4, d)),
            degree_high=max(d, 12),
            heartbeat_initial_delay=0.1,
            heartbeat_interval=1,
            gossip_window=3,
            gossip_history=5,
            adaptive_gossip_enabled=False,
            spam_protection_enabled=False,
            max_messages_per_topic_per_second=1e9,
            eclipse_protection_enabled=False,
            do_px=False,
        )
        pubsub = Pubsub(side.host, router, strict_signing=side.strict_signing)
        pubsub.peer_queues = _BigQueues()
        inner_drop = router._handle_dropped_rpc

        def counted_drop(peer_id: Any, rpc: Any, reason: str) -> Any:
            self.stats["gossip_dropped"] += 1
            return inner_drop(peer_id, rpc, reason)

        router._handle_dropped_rpc = counted_drop
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await pubsub.wait_until_ready()
        await pubsub.subscribe(side.topic)
        pubsub.subscribed_topics_send[side.topic] = _Sink(self._on_message)
        self.pubsub = pubsub

    def _on_message(self, msg: Any) -> None:  # called by pubsub for each new message
        origin = msg.from_id
        name = self.side.allowed_bytes.get(origin)
        if name is None:
            if origin != self.my_id:
                self.stats["unknown_dropped"] += 1
            return
        data = msg.data
        self.stats["msgs_recv"] += 1
        self.stats["bytes_recv"] += len(data)
        self.side.deliver(name, data)

    async def pump(self) -> None:
        """Publish what the asyncio side queued, one message at a time, in order."""
        q, pubsub, topic, stats = self.side.gossip_queue, self.pubsub, self.side.topic, self.stats
        while True:
            await wait_for_items(self, q)
            data = q.popleft()
            try:
                await pubsub.publish(topic, data)
            except Exception as exc:  # noqa: BLE001
                stats["send_failed"] += 1
                log.debug("publish failed: %r", exc)
                continue
            stats["gossip_published"] += 1
            stats["msgs_sent"] += 1
            stats["bytes_sent"] += len(data)
