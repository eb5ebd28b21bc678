"""Opt-out suppression lists and spam traps (per recipient), and the bulk-mail gate."""
