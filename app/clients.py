"""Clients and their API keys: only a hash of each key is stored."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from app.errors import Unauthorized, ValidationFailed
from app.store import ClientRecord, Store

KEY_PREFIX = "dpr_"
NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
NAME_MAX_LENGTH = 63
NAME_RULE = "lowercase letters and digits, optionally separated by single '.', '_' or '-'"
HOW_TO_GET_A_KEY = (
    "Ask the operator for a key (`python run.py clients create NAME`) and send `Authorization: Bearer KEY`."
)


def hash_key(key: str) -> str:
    """Keys are 256-bit random, so a plain SHA-256 is a safe one-way hash for them."""
    return hashlib.sha256(key.encode()).hexdigest()


def check_name(name: str) -> str:
    """The name if it is valid. :raises ValidationFailed: it is not."""
    if len(name) > NAME_MAX_LENGTH or not NAME.match(name):
        raise ValidationFailed(f"Client name {name!r} is not valid: use {NAME_RULE}.")
    return name


def create_client(store: Store, name: str, *, reuse_revoked: bool = False) -> str:
    """Register `name` and return its new key, shown once.

    A revoked name keeps its job history, so giving it a key again must be asked for (`reuse_revoked`).
    :raises ValidationFailed: a bad name, an active client of that name, or a revoked one not to be reused.
    """
    check_name(name)
    existing = _client(store, name)
    if existing is not None and existing.revoked_at is None:
        raise ValidationFailed(f"Client {name!r} already has an active key; use `clients rotate {name}` for a new one.")
    if existing is not None and not reuse_revoked:
        raise ValidationFailed(
            f"Client {name!r} was revoked and its job history still belongs to that name: choose another name, "
            f"or give it a new key with `clients create {name} --reuse-revoked`."
        )
    if existing is not None:  # the name's new holder must not share the old one's webhook secret (first: a key
        store.webhook_secret(name, rotate=True)  # is never active with the old secret)
    return _new_key(store, name)


def rotate_client(store: Store, name: str) -> str:
    """Give an active client a new key (the old one stops working at once), keeping its history.

    :raises ValidationFailed: no active client of that name.
    """
    existing = _client(store, name)
    if existing is None or existing.revoked_at is not None:
        raise ValidationFailed(f"No active client {name!r} to rotate; `clients list` shows them.")
    return _new_key(store, name)


def webhook_secret(store: Store, name: str, *, rotate: bool = False) -> str:
    """The secret the client's webhooks are signed with (HMAC-SHA256), made on first use or anew with `rotate`.

    :raises ValidationFailed: no active client of that name.
    """
    existing = _client(store, name)
    if existing is None or existing.revoked_at is not None:
        raise ValidationFailed(f"No active client {name!r}; `clients list` shows them.")
    return store.webhook_secret(name, rotate=rotate)


def _client(store: Store, name: str) -> ClientRecord | None:
    return next((c for c in store.list_clients() if c.name == name), None)


def _new_key(store: Store, name: str) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_client(name, hash_key(key))  # replaces the stored hash: any older key stops working
    return key


def authenticate(store: Store, key: str | None) -> str:
    """The name of the client owning `key`. :raises Unauthorized: no key, unknown or revoked."""
    if not key:
        raise Unauthorized(f"This endpoint needs an API key. {HOW_TO_GET_A_KEY}")
    digest = hash_key(key)
    record = store.client_by_key_hash(digest)
    if record is None or not hmac.compare_digest(record.key_hash, digest) or record.revoked_at is not None:
        raise Unauthorized(f"The API key is not valid or was revoked. {HOW_TO_GET_A_KEY}")
    return record.name


def list_clients(store: Store) -> list[ClientRecord]:
    return store.list_clients()


def revoke_client(store: Store, name: str) -> bool:
    return store.revoke_client(name)
