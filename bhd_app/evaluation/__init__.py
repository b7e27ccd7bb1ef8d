"""Evaluation: simulated scanners and traveling subjects, and known alterations (the image metrics are in bhd_app.method.metrics)."""
