"""The WebSocket of a project: its events, the output and stdin of its commands, multiplexed."""
