"""Local networks: starting validators on one host, the demo, the fault harness, the protocol's worked examples."""
