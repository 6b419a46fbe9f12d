"""Configuration: config.toml read once into frozen, typed sections.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.config.durations import parse_duration
from rtserver.config.keys import Keys
from rtserver.config.schema import (
    EXAMPLE_CONFIG,
    BrandConfig,
    CatalogConfig,
    Config,
    DashboardConfig,
    EngineConfig,
    FeedConfig,
    HooksConfig,
    MailConfig,
    PostmarkConfig,
    SendTimeConfig,
    SesConfig,
    iter_settings,
    load_config,
    resolve_config_path,
)

__all__ = [
    "BrandConfig",
    "CatalogConfig",
    "Config",
    "DashboardConfig",
    "EXAMPLE_CONFIG",
    "EngineConfig",
    "FeedConfig",
    "HooksConfig",
    "Keys",
    "MailConfig",
    "PostmarkConfig",
    "SendTimeConfig",
    "SesConfig",
    "iter_settings",
    "load_config",
    "parse_duration",
    "resolve_config_path",
]
