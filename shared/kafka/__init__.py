"""Kafka client construction (aiokafka) from settings; broker quirks kept in tansu_compat."""
