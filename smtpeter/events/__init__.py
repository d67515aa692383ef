"""Things that happen to messages after acceptance, and the notices they cause."""
