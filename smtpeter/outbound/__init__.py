"""The outbound pipeline: what happens to a stored message between the queue and the wire."""
