"""Budget alert webhooks: a signed JSON POST to the tenant's URL, delivered at least once.

The request
    POST <tenant.webhook_url>
    Content-Type: application/json
    User-Agent: llama-governor-webhooks/1
    X-Alert-Id: <alert id>            (the same on every retry: deduplicate on it)
    X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256>

The signature (the scheme Stripe uses) is HMAC-SHA256, keyed with the tenant's
`webhook_secret`, of the bytes `f"{t}.".encode() + body`. Binding the timestamp into the MAC
lets a receiver refuse old requests, so a captured delivery cannot be replayed later.

How a receiver verifies (or calls `webhook_signature_verify`):
    1. Take the raw request body bytes, before any JSON parsing or re-encoding.
    2. Split X-Signature on "," into key=value pairs: one `t`, one or more `v1`.
    3. Compute hex(HMAC-SHA256(secret, t + "." + body)); compare it with each `v1` in
       constant time (hmac.compare_digest). No match: reject.
    4. Reject when |now - t| exceeds a tolerance (we suggest 5 minutes).
    5. Deliveries are retried until a 2xx: treat X-Alert-Id as an idempotency key.

A tenant without a secret gets nothing: we refuse to send unsigned alerts. A receiver cannot
tell an unsigned alert from a forged one, and forged "limit reached" alerts are exactly what
an attacker would send to make a customer switch a product off. The refusal is recorded on
the alert (`webhook_last_error`) where an operator sees it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import http.client
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from billing.models import Alert
from config.backoff import Jitter, backoff_delay_seconds

logger = logging.getLogger(__name__)

USER_AGENT = "llama-governor-webhooks/1"
SIGNATURE_HEADER = "X-Signature"
ALERT_ID_HEADER = "X-Alert-Id"
SIGNATURE_SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
# Retries wait ~30 s, 1 min, 2 min ... up to an hour: a receiver that is down for a deploy
# gets time to come back before the attempts run out.
RETRY_BACKOFF_SECONDS = 30.0
RETRY_BACKOFF_MAX_SECONDS = 3600.0
_ERROR_MAX_LENGTH = 300  # Alert.webhook_last_error


class DeliveryResult(enum.StrEnum):
    DELIVERED = "delivered"
    FAILED = "failed"  # worth another try
    REFUSED = "refused"  # configuration forbids sending; retrying would not help
    SKIPPED = "skipped"  # nothing to send: delivered already, no URL, or no such alert


@dataclass(frozen=True)
class WebhookRequest:
    body: bytes
    headers: dict[str, str]


def _money(value: Decimal) -> str:
    # Fixed-point, never exponent notation (str(Decimal("0E-10")) is "0E-10").
    return format(value.quantize(settings.MONEY_QUANTUM), "f")


def alert_payload(alert: Alert) -> dict[str, Any]:
    budget = alert.budget
    return {
        "type": "budget_alert",
        "id": str(alert.pk),
        "kind": alert.kind,
        "tenant": alert.tenant.slug,
        "budget": {
            "id": str(budget.pk),
            "name": budget.name,
            "period": budget.period,
            "is_hard": budget.is_hard,
            "soft_threshold_percent": budget.soft_threshold_percent,
        },
        "end_user": alert.end_user.external_id if alert.end_user_id else None,
        "period_start": alert.period_start.isoformat(),
        "spent_amount": _money(alert.spent_amount),
        "limit_amount": _money(alert.limit_amount),
        "currency": settings.MONEY_CURRENCY,
        "created_at": alert.created_at.isoformat(),
    }


def _signature_digest(*, secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def webhook_signature(*, secret: str, timestamp: int, body: bytes) -> str:
    """The X-Signature header value for this body at this time."""
    if not secret:
        raise ValueError("An empty secret signs nothing; refusing to build an unsigned webhook.")
    digest = _signature_digest(secret=secret, timestamp=timestamp, body=body)
    return f"t={timestamp},{SIGNATURE_SCHEME}={digest}"


def webhook_signature_verify(
    *,
    body: bytes,
    header: str,
    secret: str,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when `header` signs exactly `body` with `secret`, within the tolerance of now."""
    if not secret or not header:
        return False
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, separator, value = part.strip().partition("=")
        if not separator:
            return False
        if key == "t":
            if timestamp is not None or not (value.isascii() and value.isdigit()):
                return False
            timestamp = int(value)
        elif key == SIGNATURE_SCHEME:
            candidates.append(value)
        # Unknown schemes are ignored, so a future v2 can be sent beside v1.
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        return False
    expected = _signature_digest(secret=secret, timestamp=timestamp, body=body)
    # Every candidate is compared, so the time taken does not say which one matched.
    # (compare_digest refuses non-ASCII str, which a header may carry.)
    matches = [
        candidate.isascii() and hmac.compare_digest(expected, candidate) for candidate in candidates
    ]
    return any(matches)


def alert_webhook_build(alert: Alert, *, timestamp: int) -> WebhookRequest:
    """The body and headers of an alert's webhook. Pure: no I/O beyond the loaded rows."""
    body = json.dumps(alert_payload(alert), separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        ALERT_ID_HEADER: str(alert.pk),
        SIGNATURE_HEADER: webhook_signature(
            secret=alert.tenant.webhook_secret, timestamp=timestamp, body=body
        ),
    }
    return WebhookRequest(body=body, headers=headers)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    # urllib would turn a redirected POST into a bodiless GET and report the GET's 200 as
    # a delivery; a redirect is an answer to fix at the receiver, so it counts as a failure.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_opener = urllib.request.build_opener(_RefuseRedirects)


def _post(url: str, request: WebhookRequest) -> str | None:
    """POST the webhook; None on a 2xx, else why not (never containing the URL)."""
    # The caller has checked the scheme is http(s): no file:, ftp: or data: URLs here.
    outgoing = urllib.request.Request(url, data=request.body, headers=request.headers)  # noqa: S310
    try:
        with _opener.open(outgoing, timeout=settings.WEBHOOK_TIMEOUT_SECONDS) as response:
            status = response.status
    except urllib.error.HTTPError as error:  # non-2xx (3xx too: redirects are refused)
        error.close()
        return f"HTTP {error.code} {error.reason}"
    except urllib.error.URLError as error:
        return f"connection failed: {error.reason}"
    except TimeoutError:
        return f"no answer within {settings.WEBHOOK_TIMEOUT_SECONDS} s"
    except (http.client.HTTPException, OSError) as error:
        return f"{type(error).__name__}: {error}"
    except ValueError:  # urllib's message would quote the URL, which may hold a token
        return "invalid webhook URL"
    if not 200 <= status < 300:  # 1xx/2xx oddities that urllib lets through
        return f"HTTP {status}"
    return None


def _record_failure(alert: Alert, error: str, *, attempted: bool) -> None:
    changes: dict[str, Any] = {"webhook_last_error": error[:_ERROR_MAX_LENGTH]}
    if attempted:
        changes["webhook_attempts"] = F("webhook_attempts") + 1
    Alert.objects.filter(pk=alert.pk, webhook_delivered_at__isnull=True).update(**changes)


def alert_webhook_deliver(*, alert_id: uuid.UUID) -> DeliveryResult:
    """Send one alert to its tenant's webhook, once it is delivered never again.

    At least once, not exactly once: two workers holding the same alert may both send it,
    so receivers deduplicate on X-Alert-Id. No database transaction is held over the POST.
    """
    alert = (
        Alert.objects.select_related("tenant", "budget", "end_user")
        .filter(pk=alert_id, webhook_delivered_at__isnull=True)
        .first()
    )
    if alert is None or not alert.tenant.webhook_url:
        return DeliveryResult.SKIPPED
    tenant = alert.tenant
    if not tenant.webhook_secret:
        _record_failure(alert, "not sent: the tenant has no webhook secret", attempted=False)
        logger.warning("Alert %s of %s not sent: no webhook secret", alert.pk, tenant.slug)
        return DeliveryResult.REFUSED
    if urllib.parse.urlsplit(tenant.webhook_url).scheme not in ("http", "https"):
        _record_failure(alert, "not sent: the webhook URL is not http(s)", attempted=False)
        logger.warning("Alert %s of %s not sent: URL is not http(s)", alert.pk, tenant.slug)
        return DeliveryResult.REFUSED

    request = alert_webhook_build(alert, timestamp=int(time.time()))
    error = _post(tenant.webhook_url, request)
    if error is not None:
        _record_failure(alert, error, attempted=True)
        logger.warning("Alert %s webhook to %s failed: %s", alert.pk, tenant.slug, error)
        return DeliveryResult.FAILED
    Alert.objects.filter(pk=alert.pk, webhook_delivered_at__isnull=True).update(
        webhook_delivered_at=timezone.now(), webhook_attempts=F("webhook_attempts") + 1
    )
    logger.info("Alert %s webhook delivered to %s", alert.pk, tenant.slug)
    return DeliveryResult.DELIVERED


def retry_delay_seconds(retries_so_far: int, random_fraction: float) -> float:
    """Equal jitter, not full jitter (as for Bedrock): a delay near zero would spend an
    attempt on a receiver that has had no time to recover."""
    return backoff_delay_seconds(
        retries_so_far=retries_so_far,
        base_seconds=RETRY_BACKOFF_SECONDS,
        max_seconds=RETRY_BACKOFF_MAX_SECONDS,
        jitter=Jitter.EQUAL,
        random_fraction=random_fraction,
    )
