"""Cython hot loops (batched ECDSA verification, batched AES-GCM)."""
