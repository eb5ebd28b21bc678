"""Replay recorded SMTP sessions through a milter or an MTA, and what-if runs of a mail log."""
