"""The HTTP API (client routes and Prometheus /metrics) on the validator's asyncio loop."""
