"""medchain validator and core library."""
