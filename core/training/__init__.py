"""Training: the set-up and epoch loop, the feature path (cached activations or full forward), the
run-level driver, the learning-rate finder, the head search, temperature calibration and TensorBoard.

May import: ``platform``, ``spec``, ``data``, ``models``, ``features``, ``runs``, ``inference``.
"""
