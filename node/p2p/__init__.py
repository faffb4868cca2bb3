"""libp2p network adapter for PBFT among validators (trio + py-libp2p behind an asyncio API).

Nothing outside this package imports trio or libp2p. See ``node.py`` for the bridge and
``_trio_side.py`` for the libp2p host.
"""

from .identity import peer_id_from_secret
from .node import P2PError, P2PNode

__all__ = ["P2PError", "P2PNode", "peer_id_from_secret"]
