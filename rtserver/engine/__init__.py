"""The workflow engine: definitions, conditions, pure decisions, the timer wheel, the pipeline."""
