"""Devices and how a run spreads over them: mesh, sharding, multi-host, ahead-of-time compile."""
