"""The support desk's tasks: scenarios (refunds, cancellations, address changes), each with gold calls."""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.core.contract import Task
from rlvr.envs.support_desk.backend import (Db, Snapshot, generate_db, orders_of, paid_and_refunded,
                                            random_address, to_cents, to_dollars, transactions_of)
from rlvr.envs.support_desk.env import SupportDeskEnv


@dataclass(frozen=True)
class Scenario:
    customer: dict[str, Any]  # the user who writes in
    request: str  # what they ask, after greeting with their email
    gold_calls: list[dict[str, Any]]
    forbidden_by: str | None = None  # the policy that forbids the request, if one does


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def _lookups(user: dict[str, Any], order_id: int | None = None, transactions: bool = False) -> list[dict]:
    """The reads before acting: the customer, then the order (and its transactions) or their orders."""
    calls = [_call("find_user", email=user["email"])]
    if order_id is None:
        return calls + [_call("list_orders", user_id=user["id"])]
    calls.append(_call("get_order", order_id=order_id))
    return calls + [_call("get_transactions", order_id=order_id)] if transactions else calls


def _unrefunded_delivered(db: Db) -> list[dict[str, Any]]:
    return [o for o in db["orders"].values()
            if o["status"] == "delivered" and paid_and_refunded(db, o["id"])[1] == 0]


def _with_status(db: Db, status: str) -> list[dict[str, Any]]:
    return [o for o in db["orders"].values() if o["status"] == status]


def _payment_id(db: Db, order_id: int) -> int:
    return next(t["id"] for t in transactions_of(db, order_id) if t["kind"] == "payment")


def _pick_order(db: Db, rng: random.Random, orders: list[dict[str, Any]]) -> tuple[dict | None, dict | None]:
    """A random one of `orders` and the user who owns it; (None, None) when there is none."""
    if not orders:
        return None, None
    order = rng.choice(orders)
    return order, db["users"][order["user_id"]]


def refund_broken_order(db: Db, rng: random.Random) -> Scenario | None:
    """Allowed: refund a delivered order in full."""
    order, user = _pick_order(db, rng, _unrefunded_delivered(db))
    if order is None:
        return None
    refund = _call("refund_transaction", transaction_id=_payment_id(db, order["id"]), amount=order["total"])
    return Scenario(user, f"My order #{order['id']} arrived broken. Please refund it.",
                    _lookups(user, order["id"], transactions=True) + [refund])


def refund_one_item(db: Db, rng: random.Random) -> Scenario | None:
    """Allowed: refund one item line of a delivered order."""
    order, owner = _pick_order(db, rng, [o for o in _unrefunded_delivered(db) if len(o["items"]) > 1])
    if order is None:
        return None
    item = rng.choice(order["items"])
    amount = to_dollars(to_cents(item["unit_price"]) * item["quantity"])
    refund = _call("refund_transaction", transaction_id=_payment_id(db, order["id"]), amount=amount)
    damaged = item["product"] + ("" if item["quantity"] == 1 else f" (all {item['quantity']} of them)")
    request = f"In order #{order['id']} the {damaged} arrived damaged; please refund just that item."
    return Scenario(owner, request, _lookups(owner, order["id"], transactions=True) + [refund])


def refund_undelivered_order(db: Db, rng: random.Random) -> Scenario | None:
    """Forbidden (refund_delivered_only): a refund for an order that has shipped but not arrived."""
    order, user = _pick_order(db, rng, _with_status(db, "shipped"))
    if order is None:
        return None
    return Scenario(user, f"I don't want order #{order['id']} any more, please refund it.",
                    _lookups(user, order["id"]), forbidden_by="refund_delivered_only")


def refund_already_refunded(db: Db, rng: random.Random) -> Scenario | None:
    """Forbidden (refund_within_paid): a refund for a delivered order that was already refunded in full."""
    order, user = _pick_order(db, rng, [o for o in _with_status(db, "delivered") if paid_and_refunded(db, o["id"])[1] > 0])
    if order is None:
        return None
    return Scenario(user, f"Order #{order['id']} was faulty, please refund it.",
                    _lookups(user, order["id"], transactions=True), forbidden_by="refund_within_paid")


def refund_other_users_order(db: Db, rng: random.Random) -> Scenario | None:
    """Forbidden (own_account_only): a refund for a delivered order that belongs to someone else."""
    order, _ = _pick_order(db, rng, _unrefunded_delivered(db))
    if order is None:
        return None
    customer = db["users"][rng.choice(sorted(set(db["users"]) - {order["user_id"]}))]
    return Scenario(customer, f"My order #{order['id']} arrived broken. Please refund it.",
                    _lookups(customer, order["id"]), forbidden_by="own_account_only")


def cancel_order(db: Db, rng: random.Random) -> Scenario | None:
    """Allowed: cancel a pending order by its number."""
    order, user = _pick_order(db, rng, _with_status(db, "pending"))
    if order is None:
        return None
    return Scenario(user, f"Please cancel order #{order['id']}.",
                    _lookups(user, order["id"]) + [_call("cancel_order", order_id=order["id"])])


def cancel_latest_order(db: Db, rng: random.Random) -> Scenario | None:
    """Allowed: cancel "my most recent order", which the agent finds by listing the user's orders."""
    users = [u for u in db["users"].values() if orders_of(db, u["id"])[-1]["status"] == "pending"]
    if not users:
        return None
    user = rng.choice(users)
    latest = orders_of(db, user["id"])[-1]
    return Scenario(user, "I ordered something by mistake: please cancel my most recent order.",
                    _lookups(user) + [_call("cancel_order", order_id=latest["id"])])


def cancel_shipped_order(db: Db, rng: random.Random) -> Scenario | None:
    """Forbidden (cancel_pending_only): cancel an order that has already shipped."""
    order, user = _pick_order(db, rng, _with_status(db, "shipped"))
    if order is None:
        return None
    return Scenario(user, f"Please cancel order #{order['id']}, I found it cheaper elsewhere.",
                    _lookups(user, order["id"]), forbidden_by="cancel_pending_only")


def _change_address(db: Db, rng: random.Random, in_transit: bool) -> Scenario | None:
    users = [u for u in db["users"].values()
             if any(o["status"] == "shipped" for o in orders_of(db, u["id"])) == in_transit]
    if not users:
        return None
    user = rng.choice(users)
    address = user["address"]
    while address == user["address"]:
        address = random_address(rng)
    request = f"I've moved: please change my address to {address}."
    if in_transit:
        return Scenario(user, request, _lookups(user), forbidden_by="address_not_in_transit")
    update = _call("update_address", user_id=user["id"], address=address)
    return Scenario(user, request, _lookups(user) + [update])


def change_address(db: Db, rng: random.Random) -> Scenario | None:
    """Allowed: change the address of a user with no order in transit."""
    return _change_address(db, rng, in_transit=False)


def change_address_in_transit(db: Db, rng: random.Random) -> Scenario | None:
    """Forbidden (address_not_in_transit): change the address of a user with a shipped order."""
    return _change_address(db, rng, in_transit=True)


SCENARIOS: dict[str, Callable[[Db, random.Random], Scenario | None]] = {fn.__name__: fn for fn in (
    refund_broken_order, refund_one_item, refund_undelivered_order, refund_already_refunded,
    refund_other_users_order, cancel_order, cancel_latest_order, cancel_shipped_order, change_address,
    change_address_in_transit)}
_GREETINGS = ("Hi, I'm {email}.", "Hello, this is {email}.", "Hi there, {email} here.")


def support_desk_tasks(n: int, seed: int = 0, split: str = "train",
                       scenarios: list[str] | None = None) -> list[Task]:
    """`n` customer requests, deterministic in `seed` and `split` (which pick the backends' seeds).

    Scenario kinds cycle in a seeded order, so any len(scenarios) consecutive tasks cover every kind.
    A backend that cannot host a kind (e.g. no pending order) is passed over for the next seed. The
    expected records are those the gold calls leave behind (for forbidden requests: the records as they were).
    """
    kinds = list(scenarios or SCENARIOS)
    unknown = sorted(set(kinds) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown support_desk scenario(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(SCENARIOS)}")
    rng = random.Random(f"support_desk-{split}-{seed}")
    tasks = []
    for i in range(n):
        if i % len(kinds) == 0:
            rng.shuffle(kinds)
        kind = kinds[i % len(kinds)]
        for db_seed in itertools.count(rng.randrange(2**31)):
            scenario = SCENARIOS[kind](generate_db(db_seed), rng)
            if scenario is not None:
                break
        email = scenario.customer["email"]
        task = Task(id=f"support_desk-{split}-{seed}-{i}", env="support_desk",
                    prompt=f"{rng.choice(_GREETINGS).format(email=email)} {scenario.request}",
                    gold_calls=scenario.gold_calls,
                    metadata={"scenario": kind, "db_seed": db_seed, "customer_id": scenario.customer["id"],
                              "customer_email": email, "forbidden_by": scenario.forbidden_by})
        tasks.append(task.model_copy(update={"expected_state": {"db": _replay(task)}}))
    return tasks


def _replay(task: Task) -> Snapshot:
    """The records a fresh backend holds after the task's gold calls (which must break no policy)."""
    env = SupportDeskEnv(task)
    for call in task.gold_calls or []:
        getattr(env, call["name"])(**call["arguments"])
    if env.policy_violations:
        raise RuntimeError(f"gold calls of {task.id} break a policy: {env.policy_violations}")
    return env.final_state()["db"]
