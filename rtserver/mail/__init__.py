"""Mail: templates, MIME, SMTP, the dev sink, the sender, and the links in every mail.

Other packages import from here; what is not listed below is private to the package.
"""

from __future__ import annotations

from rtserver.mail import links
from rtserver.mail.contexts import Contexts
from rtserver.mail.feedback import Feedback, parse_feedback
from rtserver.mail.links import Links, click_target, pages
from rtserver.mail.providers import mailgun, postmark, sendgrid
from rtserver.mail.render import SAMPLE, MailContext, Mailer, check_address
from rtserver.mail.sender import Sender, retry_delay, wake_on
from rtserver.mail.ses import (
    Fetch,
    FetchFailed,
    Sns,
    SnsMessage,
    check_fresh,
    ses_reports,
    sns_message,
)
from rtserver.mail.smtp import redact, wire_bytes
from rtserver.mail.tokens import Tokens
from rtserver.mail.transport import mail_transport

__all__ = [
    "SAMPLE",
    "Contexts",
    "Feedback",
    "Fetch",
    "FetchFailed",
    "Links",
    "click_target",
    "MailContext",
    "Mailer",
    "Sender",
    "Sns",
    "SnsMessage",
    "Tokens",
    "check_address",
    "check_fresh",
    "links",
    "mail_transport",
    "mailgun",
    "pages",
    "parse_feedback",
    "postmark",
    "redact",
    "retry_delay",
    "sendgrid",
    "ses_reports",
    "sns_message",
    "wake_on",
    "wire_bytes",
]
