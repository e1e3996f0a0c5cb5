"""Segmentation stage: train on real + synthetic pairs, score with the protocol's metrics.

``config`` (SegmentConfig), ``networks`` (MONAI networks by name), ``mixing`` (ratio / alpha / patch-merge /
synthetic-only batches), ``copypaste`` (classical baseline), ``train`` (train_segmenter), ``model_io``
(load_segmenter, predict), ``metrics`` (Dice, IoU, HD95, lesion miss rate, evaluate), ``data`` (datasets, id
lists, filtered synthetic sets, twins), ``jobs`` (the CLI's file-level entry points).
"""
