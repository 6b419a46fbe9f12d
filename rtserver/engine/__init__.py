"""The workflow engine: definitions, conditions, pure decisions, the timer wheel, the pipeline.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.engine.conditions import Expression, compile_expression, free_names
from rtserver.engine.definitions import (
    Workflows,
    compile_workflows,
    policy_from,
    sent_templates,
    webhook_steps,
)
from rtserver.engine.engine import Engine
from rtserver.engine.pipeline import Pipeline
from rtserver.engine.timers import run_timer_driver

__all__ = [
    "Engine",
    "Expression",
    "Pipeline",
    "Workflows",
    "compile_expression",
    "compile_workflows",
    "free_names",
    "policy_from",
    "run_timer_driver",
    "sent_templates",
    "webhook_steps",
]
