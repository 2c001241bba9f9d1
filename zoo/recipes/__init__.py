"""Recipes that build committed assets (above the library layers: they may import any zoo package)."""
