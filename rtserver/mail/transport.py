"""The SMTP client mail goes out through: the embedded dev sink's, or the configured relay's."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from rtserver.clock import Clock
from rtserver.config import Config
from rtserver.mail.sink import Sink, start_sink
from rtserver.mail.smtp import Relay
from rtserver.store import Store

__all__ = ["mail_transport"]

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def mail_transport(config: Config, store: Store, clock: Clock) -> AsyncIterator[Relay]:
    """The SMTP client mail goes out through: the embedded sink's, or ``mail.smtp``'s."""
    sink: Sink | None = None
    if config.mail.transport == "sink":
        sink = await start_sink(store, clock)
        logger.info("mail: the dev sink keeps every mail in the store (SMTP %s:%d)",
                    sink.host, sink.port)  # fmt: skip
        relay = Relay(sink.host, sink.port, timeout_s=config.mail.smtp.timeout_s)
    else:
        smtp = config.mail.smtp
        relay = Relay(
            smtp.host,
            smtp.port,
            username=smtp.username,
            password=smtp.password.reveal() if smtp.password else None,
            starttls=smtp.starttls,
            timeout_s=smtp.timeout_s,
        )
    try:
        yield relay
    finally:
        await relay.close()
        if sink is not None:
            await sink.close()
