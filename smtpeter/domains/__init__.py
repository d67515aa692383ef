"""Sender domains: their settings, DKIM keys, DNS records and live status (issue 10)."""
