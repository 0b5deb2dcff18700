"""RunLedger HTTP benchmark: ``python -m bench`` (or ``./run bench``); see bench/README.md."""
