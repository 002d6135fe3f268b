"""Alert messages go out as `notifications.send` jobs, one per channel of ALERT_CHANNELS.

Each job's idempotency key (and dedup id) is derived from the alert's row and the event, `alert:<id>:<event>:...`:
an evaluator that enqueues again after a crash, or a second evaluator, makes the notifications queue answer
"already sent" instead of sending a copy.
"""

from __future__ import annotations

import logging
import uuid

from redis import Redis

from app.alerts.messages import Rendered, render, test_message
from app.alerts.settings import AlertSettings
from app.alerts.store import Event
from app.errors import InvalidJobError
from app.recipients import Recipient, dedup_id
from app.runtime.enqueue import enqueue

logger = logging.getLogger(__name__)

TASK = "notifications.send"


def notify(redis: Redis, settings: AlertSettings, alert: dict, event: Event) -> list[str]:
    """Enqueue the message about `alert`'s `event` to every channel; returns the job ids."""
    if not settings.channels:
        logger.warning("alert %s %s: %s (ALERT_CHANNELS is empty: nobody is told)", alert["key"], event,
                       alert["summary"])  # fmt: skip
        return []
    message = render(alert, event, settings)
    logger.info("alert %s %s: %s", alert["key"], event, alert["summary"])
    jobs = []
    for recipient in settings.channels:
        try:
            key = f"alert:{alert['id']}:{event}:{recipient.channel}:{recipient.to}"
            jobs.append(_send(redis, recipient, message, key))
        except InvalidJobError as exc:  # one message the queue refuses must not hold back every other alert
            logger.error("alert %s %s: not sent to %s: %s", alert["key"], event, recipient.channel, exc)
    return jobs


def send_test(redis: Redis, settings: AlertSettings) -> list[tuple[Recipient, str]]:
    """Enqueue a test message to every channel; returns (recipient, job id) pairs."""
    message = test_message(settings)
    run = uuid.uuid4().hex[:12]
    return [(r, _send(redis, r, message, f"alert-test:{run}:{r.channel}:{r.to}")) for r in settings.channels]


def _send(redis: Redis, recipient: Recipient, message: Rendered, key: str) -> str:
    key = dedup_id(key)
    data = {"channel": recipient.channel, "to": recipient.to, "subject": message.subject, "text": message.text,
            "idempotencyKey": key}  # fmt: skip
    if recipient.channel == "webhook":
        data["payload"] = message.payload
    return enqueue(redis, TASK, data, {"jobId": key}).id
