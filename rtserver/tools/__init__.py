"""Commands beside serving: simulate, the demo, and the mail commands."""
