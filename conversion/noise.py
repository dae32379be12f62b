"""Moved to `diffusion.noise`; this name is kept so that older imports keep working."""

from diffusion.noise import *  # noqa: F403
