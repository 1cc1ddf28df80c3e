"""fedveil: scenario presets (TOML)."""
