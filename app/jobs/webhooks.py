"""Webhooks: when a job ends, its JSON is POSTed to the job's callback_url, signed, retried, SSRF-safe.

The receiver checks `X-Runner-Signature: sha256=<hex HMAC-SHA256 of "<X-Runner-Timestamp>.<body>">` with the
client's webhook secret (`python run.py clients webhook-secret NAME`) and rejects old timestamps (replays).
Addresses are checked after DNS resolution and the connection is pinned to the checked address (no second
lookup an attacker's DNS could answer differently); redirects are never followed.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import urllib3

from app.errors import ValidationFailed
from app.logs import log_context
from app.metrics import Metrics
from app.models import Job, WebhookState

log = logging.getLogger(__name__)
MAX_URL_LENGTH = 2048
ATTEMPTS = 6  # with the default backoff of 20 s: retries after 20, 40, 80, 160 and 320 s, about 10 minutes
RESPONSE_BYTES = 65536  # read (and ignored) of a receiver's answer
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052's well-known prefix (DNS64 on an IPv6-only host)
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


class DeliveryFailed(Exception):
    """One attempt did not get a 2xx answer; the message is shown to the job's owner."""


def is_public(address: IpAddress) -> bool:
    """Whether a packet to `address` ends up at a public address, including IPv4 addresses carried in IPv6 ones."""
    if isinstance(address, ipaddress.IPv4Address):
        return address.is_global and not address.is_multicast
    if address.ipv4_mapped is not None or address in NAT64:  # translated to the IPv4 address in its low 32 bits
        return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    # Else global unicast only: that refuses IPv4-compatible (::/96), SIIT (::ffff:0:0:0/96), local-use NAT64
    # (64:ff9b:1::/48), site-local and the rest; 6to4 and Teredo (in 2000::/3) must carry public IPv4 addresses.
    carried = [address.sixtofour, *(address.teredo or ())]
    return address in GLOBAL_UNICAST and address.is_global and all(is_public(a) for a in carried if a is not None)


def refusal(address: IpAddress, allow: Iterable[IpNetwork]) -> str | None:
    """Why a webhook may not go to `address` (loopback, private, link-local, metadata, ...), or None."""
    if any(address in network for network in allow) or is_public(address):
        return None
    return f"{address} is not a public address (loopback, private, link-local, metadata or reserved)"


def check_callback_url(url: str, allow: Iterable[IpNetwork] = ()) -> str:
    """The URL if a webhook may be sent there as far as can be told before resolving its host.

    :raises ValidationFailed: not http(s), no host, credentials in it, too long, or a literal refused address.
    """
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(f"callback_url is longer than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValidationFailed(f"callback_url is not a valid URL: {e}.") from e
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationFailed("callback_url must be an http:// or https:// URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise ValidationFailed("callback_url must not carry credentials; verify the signature instead.")
    if port == 0:
        raise ValidationFailed("callback_url has no valid port.")
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return url  # a name: checked when it is resolved, at each delivery
    reason = refusal(literal, allow)
    if reason:
        raise ValidationFailed(f"callback_url is refused: {reason}.")
    return url


class _Deadline:
    """The wall-clock limit of one attempt, enforced: at it, the attempt's socket is shut down.

    urllib3's timeouts bound each socket operation, so a receiver sending a byte now and then would hold a delivery
    thread (one of four, shared by every client) for as long as it likes; the shutdown wakes whatever read or write
    waits, TLS ones too. Connecting is bounded by the timeout itself, and the watch starts once connected.
    """

    def __init__(self, timeout_s: float) -> None:
        self.at = time.monotonic() + timeout_s
        self._sock: socket.socket | None = None
        self._timer: threading.Timer | None = None

    def watch(self, sock: socket.socket) -> None:
        self._sock = sock.dup()  # a duplicate: TLS takes the socket itself over; both are the same connection
        self._timer = threading.Timer(max(0.0, self.at - time.monotonic()), self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError):  # e.g. the receiver reset the connection meanwhile
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer.join()  # a shutdown under way ends before its socket is closed (its number could be reused)
        if self._sock is not None:
            self._sock.close()


class _Watched(urllib3.connection.HTTPConnection):
    """A connection whose socket a _Deadline (passed by the pool, as a connection keyword) watches once connected."""

    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = deadline

    def _new_conn(self) -> socket.socket:  # urllib3's one place that connects, before any TLS handshake
        sock = super()._new_conn()
        self._deadline.watch(sock)
        return sock


class _WatchedHTTPS(_Watched, urllib3.connection.HTTPSConnection):
    pass


def sign(secret: str, timestamp: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def post(url: str, body: bytes, secret: str, allow: Iterable[IpNetwork], timeout_s: float) -> int:
    """POST `body` once to `url`, pinned to a checked address; return the status (raises DeliveryFailed)."""
    parts = urlsplit(url)
    host, https = parts.hostname or "", parts.scheme == "https"
    port = parts.port or (443 if https else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise DeliveryFailed(f"could not resolve {host}") from e
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:  # every answer must be allowed: no mix of a public and a private address
        reason = refusal(address, allow)
        if reason:
            raise DeliveryFailed(f"refused: {host} resolves to {reason}")
    timestamp = str(int(time.time()))
    headers = {
        "Host": parts.netloc.rpartition("@")[2],
        "Content-Type": "application/json",
        "User-Agent": "datapane-runner-webhook",
        "X-Runner-Timestamp": timestamp,
        "X-Runner-Signature": sign(secret, timestamp, body),
    }
    deadline = _Deadline(timeout_s)
    pool: urllib3.HTTPConnectionPool
    if https:
        pool = urllib3.HTTPSConnectionPool(
            str(addresses[0]), port, server_hostname=host, assert_hostname=host, cert_reqs="CERT_REQUIRED",
            deadline=deadline,
        )  # fmt: skip
        pool.ConnectionCls = _WatchedHTTPS
    else:
        pool = urllib3.HTTPConnectionPool(str(addresses[0]), port, deadline=deadline)
        pool.ConnectionCls = _Watched
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    late = f"the receiver took longer than {timeout_s:g} s"
    try:
        response = pool.urlopen(
            "POST", path, body=body, headers=headers, redirect=False, retries=False,
            timeout=urllib3.Timeout(total=timeout_s), preload_content=False, assert_same_host=False,
        )  # fmt: skip
        response.read(RESPONSE_BYTES)
        if time.monotonic() >= deadline.at:  # an answer without a length, read until the shutdown
            raise DeliveryFailed(late)
        response.release_conn()
    except urllib3.exceptions.HTTPError as e:
        if time.monotonic() >= deadline.at:  # cut by the shutdown, or a read that timed out at the deadline
            raise DeliveryFailed(late) from e
        raise DeliveryFailed(f"could not deliver: {type(e).__name__}") from e
    finally:
        deadline.close()
        pool.close()
    if 300 <= response.status < 400:
        raise DeliveryFailed(f"HTTP {response.status}: redirects are not followed")
    if not 200 <= response.status < 300:
        raise DeliveryFailed(f"HTTP {response.status}")
    return int(response.status)


@dataclass(frozen=True)
class WebhookStore:
    """What the sender needs of the store (kept narrow so a test can see every call)."""

    get_job: Callable[[str], Job | None]
    save_state: Callable[[str, WebhookState], None]
    secret_of: Callable[[str], str]


class WebhookSender:
    """Delivers webhooks of the jobs this process finished, off the job's and the API's threads, with retries."""

    def __init__(
        self,
        store: WebhookStore,
        render: Callable[[Job], dict[str, Any]],
        *,
        allow: tuple[IpNetwork, ...],
        backoff_s: float,
        timeout_s: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._metrics = metrics or Metrics()
        self._render = render
        self._allow = allow
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        self._due: list[tuple[float, str, int]] = []  # (when, job id, attempt)
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._deliveries = ThreadPoolExecutor(max_workers=4, thread_name_prefix="webhook")

    def job_ended(self, job_id: str, attempt: int = 1, delay_s: float = 0.0) -> None:
        """Schedule the webhook of a finished job (no-op for a job without a callback_url)."""
        with self._cond:
            if self._closed:
                return
            heapq.heappush(self._due, (time.monotonic() + delay_s, job_id, attempt))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="webhooks", daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self) -> None:
        """Stop; deliveries not yet made stay `pending` in the store (resumed at this instance's next start)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._deliveries.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._cond.wait(timeout=(self._due[0][0] - time.monotonic()) if self._due else None)
                if self._closed:
                    return
                _, job_id, attempt = heapq.heappop(self._due)
            try:
                self._deliveries.submit(self._attempt, job_id, attempt)
            except RuntimeError:  # shut down meanwhile
                return

    def _attempt(self, job_id: str, attempt: int) -> None:
        with log_context(job_id=job_id):
            self._deliver(job_id, attempt)

    def _deliver(self, job_id: str, attempt: int) -> None:
        try:
            job = self._store.get_job(job_id)
            if job is None or not job.callback_url or not job.status.finished:
                return
            body = json.dumps(self._render(job), separators=(",", ":")).encode()
            try:
                post(job.callback_url, body, self._store.secret_of(job.client), self._allow, self._timeout_s)
            except DeliveryFailed as e:
                self._metrics.webhooks.labels("failed").inc()
                last = attempt >= ATTEMPTS
                self._store.save_state(job_id, WebhookState("failed" if last else "pending", attempt, str(e)))
                log.info("job %s webhook attempt %d failed: %s", job_id, attempt, e)
                if not last:
                    self.job_ended(job_id, attempt + 1, self._backoff_s * 2 ** (attempt - 1))
                return
            self._metrics.webhooks.labels("delivered").inc()
            self._store.save_state(job_id, WebhookState("delivered", attempt, None))
            log.info("job %s webhook delivered (attempt %d)", job_id, attempt)
        except Exception:
            log.exception("job %s webhook attempt %d failed in the service", job_id, attempt)
