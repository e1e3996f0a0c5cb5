"""Closed-loop synthesis: train the segmenter, diagnose what it gets wrong, synthesize what it misses, retrain.

``settings`` (the arm's loop options), ``diagnose`` (failures by size band, position, shape, appearance, subset;
uncertainty on images without masks), ``conditions`` (the diagnosis as mask / prompt / background draws),
``rounds`` (the resumable K-round loop), ``arm`` (the ``closed-loop`` experiment arm and ``lesionforge loop``).
"""
