"""Moved to the `tasks` package; this name is kept so that older imports keep working."""

from tasks import *  # noqa: F403
