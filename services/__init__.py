"""RunLedger services: thin adapters around the pure domain in ``shared``."""
