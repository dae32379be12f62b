"""Moved to `diffusion.attention`; this name is kept so that older imports keep working."""

from diffusion.attention import *  # noqa: F403
