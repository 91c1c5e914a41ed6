"""Semantic rules: checks JSON Schema cannot express. Each returns Problems, never raises."""
