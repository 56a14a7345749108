"""Looking at data and results: the data check (copies, label suspects, separability), the report of a
run on its test split and the comparison of runs.

May import: ``platform``, ``spec``, ``data``, ``models``, ``features``, ``runs``, ``inference``,
``training``.
"""
