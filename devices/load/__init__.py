"""Load and measurement: the wearable fleet and its closing check, the load generator, the benchmark sweeps and meters, the floor, attack tools."""
