"""Keeps the pause estimator's learned durations in the sessions' LMDB environment."""
from __future__ import annotations

import logging

import lmdb

from sessions.estimator import PauseEstimator

log = logging.getLogger(__name__)

DB_NAME = b"pause_estimator"
KEY = b"state"


def load_estimator(env: lmdb.Environment) -> PauseEstimator:
    """The estimator saved in `env`, or a fresh one (priors only) when none was saved."""
    db = env.open_db(DB_NAME)
    with env.begin(db=db) as txn:
        data = txn.get(KEY)
    if data is None:
        return PauseEstimator()
    try:
        return PauseEstimator.from_bytes(bytes(data))
    except Exception as e:  # an unreadable record costs what was learned, never the server
        log.warning("saved pause estimator unreadable (%s); starting from the priors", e)
        return PauseEstimator()


def save_estimator(env: lmdb.Environment, estimator: PauseEstimator) -> None:
    db = env.open_db(DB_NAME)
    with env.begin(db=db, write=True) as txn:
        txn.put(KEY, estimator.to_bytes())
