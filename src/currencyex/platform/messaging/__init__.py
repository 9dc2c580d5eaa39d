"""Events leaving the process: the event bus adapters, the transactional outbox, email."""
