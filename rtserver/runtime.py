"""The shop's workflows as the engine runs them: compiled, checked and ready (``load_rules``).

Everything a workflow refers to is checked here, at start and by ``check-config``, never first
when a step runs: each template is compiled and rendered against sample data, and each webhook
step's destination is held against ``hooks.allow`` and the address rules of
:mod:`rtserver.hooks.destinations`.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path

from rtserver.config.schema import Config, MailConfig
from rtserver.engine.definitions import (
    Workflows,
    compile_workflows,
    policy_from,
    sent_templates,
    webhook_steps,
)
from rtserver.errors import ConfigError
from rtserver.hooks.destinations import Resolve, check_steps, resolve_host
from rtserver.mail.render import Mailer
from rtserver.mail.tokens import Tokens

__all__ = ["SYSTEM_TEMPLATES", "load_rules", "make_mailer"]


SYSTEM_TEMPLATES = ("confirm", "test")
"""Templates rtserver sends by itself: the double opt-in confirmation and the test mail."""


def make_mailer(config: Config, tokens: Tokens) -> Mailer:
    """The mailer for ``config``: the shipped templates, overridden by ``mail.templates``."""
    folder = Path(config.mail.templates) if config.mail.templates else None
    return Mailer(config.mail, config.server.public_url, tokens, template_dir=folder)


@functools.lru_cache(maxsize=32)
def _template_check(mail: MailConfig, public_url: str) -> dict[str, tuple[str, ...]]:
    """Each template there is, with the problems of rendering it against sample data
    (cached: tests and the simulator load the same rules many times)."""
    folder = Path(mail.templates) if mail.templates else None
    mailer = Mailer(mail, public_url, Tokens(secrets.token_urlsafe(32)), template_dir=folder)
    return {name: tuple(mailer.check([name])) for name in mailer.names()}


def load_rules(config: Config, resolve: Resolve = resolve_host) -> tuple[Workflows, list[str]]:
    """Compile the config's workflows under its mail policy; returns them and the warnings.

    Every template is compiled and rendered against sample data here, at start and by
    ``check-config``, never first at send time.

    Raises:
        ConfigError: the workflow, the step and the problem; a template's problem; a
            webhook step outside ``hooks.allow`` or on a refused address (``resolve``).
    """
    checked = _template_check(config.mail, config.server.public_url)
    rules, warnings = compile_workflows(
        config.workflow, templates=frozenset(checked), policy=policy_from(config.mail)
    )
    used = sent_templates(rules) | set(SYSTEM_TEMPLATES)
    bad = [p for name in sorted(used) for p in checked.get(name, (f"email/{name}: missing",))]
    if bad:
        raise ConfigError("mail templates: " + "; ".join(bad))
    for name in sorted(set(checked) - used):
        warnings.extend(f"{p} (template not sent by any workflow)" for p in checked[name])
    hooks = config.hooks
    warnings += check_steps(webhook_steps(rules), hooks.allow, hooks.allow_private, resolve)
    return rules, warnings
