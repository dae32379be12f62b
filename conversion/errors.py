"""Moved to `common.errors`; this name is kept so that older imports keep working."""

from common.errors import *  # noqa: F403
