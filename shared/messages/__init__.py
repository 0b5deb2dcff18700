"""Versioned message envelopes (commands, events, replies) and their orjson codec."""
