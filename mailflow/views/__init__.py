"""Per-account views for admins and hosting panels: `mailflow top`, `mailflow ratelimit status`,
`mailflow near-limit` (views/cli.py), over the counts the milters keep (mailflow/sent.py)."""
