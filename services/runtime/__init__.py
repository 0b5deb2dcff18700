"""The service runtime every RunLedger service uses: Kafka clients (and the embedded-broker
fixes), the consumer-service lifecycle, the command bus with read-your-writes, Redis stores,
health and logging. Services stay thin on top of it."""
