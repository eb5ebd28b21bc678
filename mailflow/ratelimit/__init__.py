"""Token-bucket rate limits: parsing (limits) and pure arithmetic (bucket)."""
