"""Mail: templates, MIME, SMTP, the dev sink, the sender, and the links in every mail."""
