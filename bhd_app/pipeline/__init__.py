"""The BIDS App around the method: find inputs, preprocess, harmonize, write derivatives and reports.

Data flow: ``bids`` (layout, jobs, names) -> ``preprocessing`` (section 4.1) -> ``workflows``
(nipype, one workflow per job, calling ``bhd_app.method``) -> ``derivatives`` and ``reports``;
``group`` reads the derivatives back for the group level.
"""
