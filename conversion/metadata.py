"""Moved to `common.metadata`; this name is kept so that older imports keep working."""

from common.metadata import *  # noqa: F403
