"""RunLedger's shared package: messages, topics, settings and pure domain logic.

Everything here is imported by the services and by clients; nothing here does I/O
except the thin Kafka/Redis helpers under ``shared.kafka`` and the HTTP client.
"""
