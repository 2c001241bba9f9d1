"""Families: one folder each, `model.py` (the nn.Module and its inference core) and `module.py` (the
LightningModule on `zoo.models.base.FamilyModule`)."""

# The file of an exported folder that names its family (and what its predictor needs) for zoo.load.
MODEL_CONFIG_FILE = "zoo_model.json"
