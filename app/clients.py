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


def create_client(store: Store, name: str) -> str:
    """Register `name` (or give a revoked client a new key) and return its new key, shown once."""
    check_name(name)
    if any(c.name == name and c.revoked_at is None for c in store.list_clients()):
        raise ValidationFailed(f"Client {name!r} already has an active key; revoke it first to issue a new one.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    store.add_client(name, hash_key(key))
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
