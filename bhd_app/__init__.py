"""bhd: BlindHarmonyDiff as a BIDS App (blind 3D MRI harmonization to one target domain)."""

__version__ = "0.1.0"
