"""Evaluation: simulated scanners and traveling subjects, known alterations, and image metrics."""
