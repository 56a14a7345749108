"""What a run is, without torch: the architecture table (archs), the hyperparameters (``TrainConfig``,
validated once), the one enum of states and phases, and the typed records a run writes and the pages read.

May import: ``platform``.
"""
