"""A run's folder: ``RunDir`` owns its file names, the creation claim, locks, the heartbeat and reading its
records back.

May import: ``platform``, ``spec``.
"""
