"""Delivery feedback: what the MTA's own log (feedback/follow.py) and recipients' complaints
(feedback/arf.py) say about each account's mail, counted per account and hour for the
reputation ladder (mailflow/reputation/)."""
