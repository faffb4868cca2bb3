"""Keys, addresses, signatures (single and batch), AEAD and key sealing."""
