"""Configuration: config.toml read once into frozen, typed sections."""
