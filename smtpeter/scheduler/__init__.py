"""The scheduler: turns the queue into delivery attempts, retries and outcomes."""
