"""Moved to the `sampling` package; this name is kept so that older imports keep working."""

from sampling import *  # noqa: F403
