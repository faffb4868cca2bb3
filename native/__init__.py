"""Cython hot loops: batched ECDSA verification and signing, batched AES-GCM, the state tree's per-block
update, and the wire decoder's fast path. Each has a pure-Python fallback (MEDCHAIN_NO_NATIVE=1 forces it)."""
