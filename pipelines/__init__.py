"""Pipeline definitions and presets (YAML configs for the reference experiments)."""
