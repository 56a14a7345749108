"""The app's training processes: the queue that starts, lists and stops runs, the worker process
(``python -m core.jobs.worker``) and the console lines it prints.

May import: ``platform``, ``spec``, ``data``, ``models``, ``features``, ``runs``, ``inference``,
``training``, ``analysis``.
"""
