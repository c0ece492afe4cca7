"""Bridges that republish the broker's sessions: WebSocket (bridges.ws) and LSL (bridges.lsl)."""
