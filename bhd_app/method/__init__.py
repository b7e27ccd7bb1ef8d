"""The BlindHarmonyDiff method on arrays: edge map, edge-to-image U-Net, rectified flow, refinement, baselines, image metrics.

Knows nothing of BIDS, NIfTI or files: every function takes and returns arrays on the
harmonization grid (D, H, W).
"""
