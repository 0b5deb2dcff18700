"""Pure domain logic: no I/O, no clocks (time is passed in), no randomness (ids are passed in)."""
