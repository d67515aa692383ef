"""mx.listen: the receiving listener for what comes back (bounces, replies, complaints, reports)."""
