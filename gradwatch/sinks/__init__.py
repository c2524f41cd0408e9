"""Where step records and findings go (each a :class:`~gradwatch.sinks.base.Sink`).

``memory`` (``Watcher.history`` and ``Watcher.findings``), ``tensorboard`` (event files, imported only
when asked for), ``warn`` (Python warnings, ``GradientError``, log records), ``base`` (the protocol and
a null sink).
"""

from gradwatch.sinks.base import NullSink, Sink
from gradwatch.sinks.memory import History, MemorySink
from gradwatch.sinks.warn import WarningSink

__all__ = ["History", "MemorySink", "NullSink", "Sink", "WarningSink"]
