"""Message transforms applied at delivery time: plain functions on bytes."""
