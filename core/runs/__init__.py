"""A run's folder. ``rundir``: ``RunDir``, the one place that names its files; ``create``: making runs and the
claims that start or resume them; ``status``: status.json and what a reader concludes from it; ``files``: the
records and outputs read back, checked; ``listing``: runs as the pages list them, and ``runs clean``;
``checkpoint``: the typed checkpoint.

May import: ``platform``, ``spec``.
"""
