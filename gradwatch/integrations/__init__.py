"""Framework integrations; each module imports its framework only when imported itself.

* :mod:`gradwatch.integrations.lightning`: ``GradWatchCallback`` for Lightning's ``Trainer``.
"""
