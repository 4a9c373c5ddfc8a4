"""Data-sanitization defenses (sphere / slab / loss / k-NN), see :mod:`poisoning.defenses.sanitizers`."""

from poisoning.defenses import sanitizers
from poisoning.defenses.sanitizers import *  # noqa: F401,F403  (the public names, listed once in sanitizers.__all__)

__all__ = list(sanitizers.__all__)
