"""The pymilter adapter (adapter.py), its daemon (server.py) and a milter-protocol client (client.py).

Never run a file in this folder directly: pymilter's C module is the top-level `milter`.
"""
