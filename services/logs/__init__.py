"""The log service: log lines and state changes into the log store; end markers for watchers."""
