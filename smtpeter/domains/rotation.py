"""Rotation of managed DKIM keys: decided by a pure function of the keys, the DNS and the time.

Per algorithm a domain has at most three managed keys, one per selector (``zero``, ``one``,
``two``; ``-ed`` for ed25519): the ACTIVE one signs, the NEXT one is published and waits, the
RETIRED one stays published for mail still in flight. After each DNS check ``plan`` says what
to do and ``apply`` does it:

* a RETIRED key past its end is deleted;
* a NEXT key the check saw published becomes ACTIVE when there is no ACTIVE key, or when the
  ACTIVE key has signed for ``rotation_days`` (that one then retires, published ``retired_days``
  more). A key never signs before it is published;
* whenever no NEXT key exists and a selector is free, a NEXT key is made there, the selector
  after the newest key's in the cycle (zero → one → two → zero): it is published (by our hosted
  zone at once, by self-hosting customers when they get to it) long before it signs.

Customer keys are never touched. Managed keys of an algorithm no longer configured stop: an
ACTIVE one retires (and goes after ``retired_days``), a NEXT one, which never signed, goes now.

Several nodes may check the same domain at once; what one does another may find done (a key
created already, deleted already) and that is fine: the same plan leads to the same state.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from smtpeter.domains.model import ACTIVE, ALGORITHMS, NEXT, RETIRED, SELECTORS, DkimKey
from smtpeter.storage import Conflict, NotFound

log = Logger()

DAY = 86400.0


@dataclass(frozen=True)
class Create:
    algorithm: str
    selector: str


@dataclass(frozen=True)
class Activate:
    selector: str


@dataclass(frozen=True)
class Retire:
    selector: str
    end: float  # published until then, deleted after


@dataclass(frozen=True)
class Delete:
    selector: str


Action = Create | Activate | Retire | Delete


def plan(keys: Sequence[DkimKey], published_selectors: Collection[str], now: float, rotation_days: float,
         retired_days: float, algorithms: Sequence[str]) -> list[Action]:
    """What to do with one domain's keys now (module docstring), in the order to do it."""
    actions: list[Action] = []
    retire_until = now + retired_days * DAY
    taken = {key.selector for key in keys}  # a customer's selector is never ours to make a key under
    for algorithm in ALGORITHMS:
        mine = [key for key in keys if key.managed and key.algorithm == algorithm]
        if algorithm not in algorithms:
            actions += _stop(mine, now, retire_until)
            continue
        for key in mine:
            if key.state == RETIRED and key.end is None:
                actions.append(Retire(key.selector, retire_until))  # give it an end
            elif key.state == RETIRED and key.end is not None and key.end <= now:
                actions.append(Delete(key.selector))
                taken.discard(key.selector)
        actives = sorted((key for key in mine if key.state == ACTIVE), key=_signing_since)
        waiting = sorted((key for key in mine if key.state == NEXT), key=lambda key: key.created)
        ready = [key for key in waiting if key.selector in published_selectors]
        active = actives[-1] if actives else None
        # Two ACTIVE keys (two nodes rotated at once, or a crash mid-rotation): the newer signs.
        retiring = actives[:-1]
        if ready and (active is None or now - _signing_since(active) >= rotation_days * DAY):
            # Activated before the old key retires: signing never pauses in between (while both
            # are ACTIVE the newer signs; a crash in between leaves that, and the next plan retires).
            actions.append(Activate(ready[0].selector))
            waiting.remove(ready[0])
            retiring = actives
            active = ready[0]
        actions += [Retire(key.selector, retire_until) for key in retiring]
        if not waiting:
            newest = active or max(mine, key=lambda key: key.created, default=None)
            selector = _free_selector(algorithm, newest, taken)
            if selector is not None:
                actions.append(Create(algorithm, selector))
                taken.add(selector)
    return actions


def _signing_since(key: DkimKey) -> float:
    return key.activated if key.activated is not None else key.created


def _stop(keys: Sequence[DkimKey], now: float, retire_until: float) -> list[Action]:
    """Managed keys of an algorithm no longer configured: out of use, then out of DNS."""
    actions: list[Action] = []
    for key in keys:
        if key.state == NEXT or (key.state == RETIRED and key.end is not None and key.end <= now):
            actions.append(Delete(key.selector))
        elif key.state == ACTIVE or key.end is None:
            actions.append(Retire(key.selector, retire_until))
    return actions


def _free_selector(algorithm: str, newest: DkimKey | None, taken: Collection[str]) -> str | None:
    """The first free selector after ``newest``'s in the cycle (from the first without one)."""
    cycle = SELECTORS[algorithm]
    start = cycle.index(newest.selector) + 1 if newest is not None and newest.selector in cycle else 0
    for offset in range(len(cycle)):
        selector = cycle[(start + offset) % len(cycle)]
        if selector not in taken:
            return selector
    return None


async def apply(keystore: Any, storage: Any, account_id: str, domain: str, actions: Sequence[Action],
                now: float) -> None:
    """Carry ``actions`` out for the account's ``domain``, in order. One another node carried out
    first (the key is there already, or gone already) is passed over."""
    for action in actions:
        try:
            if isinstance(action, Create):
                await keystore.create(account_id, domain, action.algorithm, action.selector, NEXT)
            elif isinstance(action, Activate):
                await storage.update_dkim_key(domain, action.selector, state=ACTIVE, activated=now)
            elif isinstance(action, Retire):
                await storage.update_dkim_key(domain, action.selector, state=RETIRED, end=action.end)
            else:
                await storage.delete_dkim_key(account_id, domain, action.selector)
        except (Conflict, NotFound) as exc:
            log.info("DKIM key rotation of {domain}: {action} done elsewhere already ({reason})",
                     domain=domain, action=action, reason=str(exc))
        else:
            log.info("DKIM key rotation of {domain}: {action}", domain=domain, action=action)
