"""What `aigw dev` keeps between runs: moto's own state for the gateway's user pool and tables.

moto holds each service's state as Python objects in this process (the local gateway serves moto in-process),
so a snapshot is those objects pickled — the pool with its id, app client, users, passwords, groups and refresh
tokens, and the tables with their items — and a restart loads them back before anything is served. Every read
and write still goes through the AWS APIs; only where moto keeps its data survives. The signing key is not
pickled: it is moto's bundled key, loaded again (tokens signed before a restart still verify).

A snapshot names the moto version it was taken with; another version's (or an unreadable one) is not loaded:
the gateway starts clean and says why, and the old file is kept beside as ``*.unreadable``.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import moto
from joserfc import jwk
from moto.cognitoidp.models import cognitoidp_backends
from moto.core import DEFAULT_ACCOUNT_ID
from moto.dynamodb.models import dynamodb_backends
from moto.utilities.utils import load_resource

SNAPSHOT_NAME = "moto-state.pickle"
_FORMAT = 1
_SIGNING_KEY = "moto-cognito-signing-key"


class SnapshotUnreadableError(Exception):
    """The snapshot cannot be loaded (another moto version, a broken file): start clean."""


def _signing_key() -> Any:
    return jwk.RSAKey.import_key(load_resource("cognitoidp/resources/jwks-private.json"))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> str | None:
        return _SIGNING_KEY if isinstance(obj, jwk.RSAKey) else None


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid != _SIGNING_KEY:
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        return _signing_key()


@dataclass(frozen=True)
class Restored:
    pool_ids: tuple[str, ...]
    table_names: tuple[str, ...]


def _backends(region: str) -> tuple[Any, Any]:
    return cognitoidp_backends[DEFAULT_ACCOUNT_ID][region], dynamodb_backends[DEFAULT_ACCOUNT_ID][region]


def save(path: Path, region: str, *, pool_ids: list[str], table_names: list[str]) -> int:
    """Pickle the named pools and tables to `path` (atomically: a crash mid-write keeps the last snapshot);
    returns the bytes written. Call it while moto serves nothing (AtomicMotoServer's lock)."""
    cognito, dynamodb = _backends(region)
    state = {
        "format": _FORMAT,
        "moto": moto.__version__,
        "region": region,
        "pools": {pid: cognito.user_pools[pid] for pid in pool_ids if pid in cognito.user_pools},
        "tables": {name: dynamodb.tables[name] for name in table_names if name in dynamodb.tables},
    }
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(buffer.getvalue())
    os.replace(partial, path)
    return len(buffer.getvalue())


def restore(path: Path, region: str) -> Restored:
    """Load a snapshot into moto (before the gateway serves anything). Raises SnapshotUnreadableError."""
    try:
        with path.open("rb") as file:
            state = _Unpickler(file).load()
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError) as err:
        raise SnapshotUnreadableError(f"{path} could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        raise SnapshotUnreadableError(f"{path} is not a snapshot this version of aigw writes")
    if state.get("moto") != moto.__version__:
        raise SnapshotUnreadableError(f"{path} was taken with moto {state.get('moto')}, this is {moto.__version__}")
    if state.get("region") != region:
        raise SnapshotUnreadableError(f"{path} is of region {state.get('region')}, the stack's is {region}")
    cognito, dynamodb = _backends(region)
    cognito.user_pools.update(state["pools"])
    dynamodb.tables.update(state["tables"])
    return Restored(pool_ids=tuple(state["pools"]), table_names=tuple(state["tables"]))


def set_aside(path: Path) -> Path:
    """Keep an unreadable snapshot for inspection instead of overwriting it with the fresh one."""
    aside = path.with_suffix(".unreadable")
    os.replace(path, aside)
    return aside
