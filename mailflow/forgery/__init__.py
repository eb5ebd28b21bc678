"""Header forgery and impersonation checks: addresses (parsing), ownership (who owns which
domains), lookalike (confusable domains) and rules (the checks, pure)."""
