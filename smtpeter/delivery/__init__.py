"""Outbound delivery: finding and talking to the receiving mail servers."""
