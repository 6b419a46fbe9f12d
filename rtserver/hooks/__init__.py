"""Outbound webhooks: the sender, where they may go (the SSRF guard), and their signatures."""
