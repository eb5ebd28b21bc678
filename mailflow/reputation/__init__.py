"""The reputation ladder: normal -> warn -> throttle -> hold -> block, moved by delivery feedback
(mailflow/feedback/) and stepped down after a clean period or by an admin."""
