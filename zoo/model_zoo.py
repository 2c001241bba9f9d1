"""Every named model of the zoo. Families add their entries here (see zoo.registry)."""

from zoo.registry import ModelEntry, register, register_predictor  # noqa: F401
