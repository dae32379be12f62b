"""The hooking layer and the inputs to probe with.

`probe.tasks` holds the task suites (IOI, Greater-Than, induction, Countdown, infilling, sudoku)
that render clean/corrupted pairs for AR or MDM reading.
"""

from conversion import _env  # noqa: F401  (offline flags before transformers is imported)
