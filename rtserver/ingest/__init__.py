"""Ingest: the WebSocket, the Segment-compatible HTTP API, inbound webhooks and the snippet."""
