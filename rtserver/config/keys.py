"""The keys in force: configured (file or environment), else generated once and stored."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys in force: from the config or the environment, else generated and stored."""

    public: str
    write: str
    identity_secret: str
    link_secret: str = ""
    """Signs mail links; generated once and kept in the store, like the others."""
    webhook_secrets: tuple[str, ...] = ()
    """Verify signed inbound webhooks: the current secret, then the one rotated out."""
    hooks_secret: str = ""
    """Signs the webhooks workflows send (receivers verify with it)."""
