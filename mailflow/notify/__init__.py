"""Notices of policy events (mailflow/events.py): the log, a signed webhook, e-mail to the admins
and to customers. notifier.py runs them off the publisher's thread; mail.py is the one e-mail
channel, shared with the DNSBL watcher's alerts."""
