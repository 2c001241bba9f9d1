"""Synthetic data generators, deterministic by seed."""

from zoo.data.synthetic.scenes import SceneSample, SyntheticSceneDataset, render_scene

__all__ = ["SceneSample", "SyntheticSceneDataset", "render_scene"]
