"""Pure helpers for what the Prefect 1.x client sends (serialized flows)."""
