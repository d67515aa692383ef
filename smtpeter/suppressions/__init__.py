"""The suppression list: addresses an account no longer sends to, filled by rules over the event
feed (rules.py), kept in memory per account for delivery (registry.py), and one-click unsubscribe
links that add to it (oneclick.py)."""
