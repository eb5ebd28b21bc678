"""`on_error = "local"`: enforcing with per-host buckets while the shared store is unreachable,
and adding what was spent meanwhile to the store's buckets once it answers (README, "Local fallback")."""
