"""Small shared utilities (files, hashing, paths)."""
