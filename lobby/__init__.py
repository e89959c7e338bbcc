"""lobby: a real-time WebSocket lobby server for multiplayer games."""

__version__ = "0.1.0"
