"""The scheduling service (agents, the queue, concurrency slots, recovery, schedules)."""
