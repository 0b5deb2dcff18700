"""Read models: Redis documents projected from the event log (pure projection + key names)."""
