"""The support desk's backend: a generated shop (users, orders, transactions) and its written policies."""

from __future__ import annotations

import copy
import random
from typing import Any



POLICIES: dict[str, str] = {
    "own_account_only": "Act only on the account of the customer who wrote in (identified by their email): "
                        "never refund, cancel or change anything that belongs to another user.",
    "refund_delivered_only": "Refunds are issued only for delivered orders "
                             "(not pending, shipped or cancelled ones).",
    "refund_within_paid": "The refunds of an order can never add up to more than was paid for it.",
    "cancel_pending_only": "Only pending orders can be cancelled; "
                           "cancelling refunds the payment automatically.",
    "address_not_in_transit": "A user's address cannot be changed while they have an order that has "
                              "shipped but not been delivered.",
}
REFUSAL_PREFIX = "refused by policy"  # how the answer to a refused call starts
STATUSES = ("pending", "shipped", "delivered", "cancelled")
STATE_CHANGING_TOOLS = frozenset({"refund_transaction", "cancel_order", "update_address"})

_FIRST_NAMES = ("alice", "bruno", "carmen", "dmitri", "elena", "felix", "gita", "hugo", "isla", "jamal",
                "keiko", "lars", "mina", "nico", "omar", "paula", "ravi", "sofia", "tomas", "uma")
_LAST_NAMES = ("adams", "baker", "chen", "diaz", "evans", "fischer", "garcia", "hansen", "ito", "jones",
               "khan", "lopez", "moreau", "nagy", "olsen", "patel")
_DOMAINS = ("example.com", "mail.test", "inbox.test")
_STREETS = ("Maple", "Harbor", "Cedar", "Station", "Mill", "Orchard", "Bridge", "Willow", "Castle", "Elm")
_STREET_KINDS = ("Street", "Road", "Avenue", "Lane")
_TOWNS = ("Springfield", "Riverton", "Lakeside", "Fairview", "Brookhaven", "Hillcrest")
_PRODUCTS = (("Desk Lamp", 34.99), ("Ceramic Mug", 12.5), ("Wool Blanket", 79.0), ("Headphones", 129.99),
             ("Yoga Mat", 25.75), ("Coffee Maker", 89.9), ("Backpack", 54.0), ("Phone Case", 15.99),
             ("Water Bottle", 18.25), ("Board Game", 42.0), ("Throw Pillow", 22.4),
             ("Bluetooth Speaker", 64.5))

Db = dict[str, dict[int, dict[str, Any]]]  # table name -> id -> record
Snapshot = dict[str, list[dict[str, Any]]]  # table name -> records sorted by id


def to_cents(amount: float) -> int:
    return round(amount * 100)


def to_dollars(cents: int) -> float:
    return round(cents / 100, 2)


# --------------------------------------------------------------------------------------------------
# The backend's records


def random_address(rng: random.Random) -> str:
    return f"{rng.randint(1, 250)} {rng.choice(_STREETS)} {rng.choice(_STREET_KINDS)}, {rng.choice(_TOWNS)}"


def generate_db(db_seed: int) -> Db:
    """Users, orders and transactions, keyed by id, deterministic in `db_seed`.

    Every order was paid when placed; cancelled orders were refunded in full, and some delivered orders
    were already refunded in full (so a second refund breaks `refund_within_paid`).
    """
    rng = random.Random(f"support-desk-db-{db_seed}")
    db: Db = {"users": {}, "orders": {}, "transactions": {}}
    n_users = rng.randint(6, 9)
    names = rng.sample([(f, l) for f in _FIRST_NAMES for l in _LAST_NAMES], n_users)
    user_ids = rng.sample(range(100, 1000), n_users)
    order_ids = iter(rng.sample(range(1000, 10000), 4 * n_users))
    transaction_ids = iter(rng.sample(range(20000, 90000), 8 * n_users))

    def pay(order_id: int, kind: str, amount: float) -> None:
        transaction_id = next(transaction_ids)
        db["transactions"][transaction_id] = {"id": transaction_id, "order_id": order_id, "kind": kind,
                                              "amount": amount}

    for user_id, (first, last) in zip(user_ids, names):
        email = f"{first}.{last}@{rng.choice(_DOMAINS)}"
        db["users"][user_id] = {"id": user_id, "name": f"{first.title()} {last.title()}", "email": email,
                                "address": random_address(rng)}
        for day in sorted(rng.sample(range(1, 300), rng.randint(1, 4))):
            order_id = next(order_ids)
            items = [{"product": product, "quantity": rng.randint(1, 3), "unit_price": price}
                     for product, price in rng.sample(_PRODUCTS, rng.randint(1, 3))]
            total = to_dollars(sum(to_cents(i["unit_price"]) * i["quantity"] for i in items))
            status = rng.choices(STATUSES, weights=(25, 25, 40, 10))[0]
            placed = f"2024-{1 + (day - 1) // 28:02d}-{1 + (day - 1) % 28:02d}"
            db["orders"][order_id] = {"id": order_id, "user_id": user_id, "status": status, "placed": placed,
                                      "items": items, "total": total}
            pay(order_id, "payment", total)
            if status == "cancelled" or (status == "delivered" and rng.random() < 0.2):
                pay(order_id, "refund", total)
    return db


def orders_of(db: Db, user_id: int) -> list[dict[str, Any]]:
    """A user's orders, oldest first."""
    return sorted((o for o in db["orders"].values() if o["user_id"] == user_id), key=lambda o: o["placed"])


def transactions_of(db: Db, order_id: int) -> list[dict[str, Any]]:
    """An order's transactions, by id."""
    return [t for _, t in sorted(db["transactions"].items()) if t["order_id"] == order_id]


def paid_and_refunded(db: Db, order_id: int) -> tuple[int, int]:
    """Cents paid for an order and cents refunded so far."""
    cents = {"payment": 0, "refund": 0}
    for t in transactions_of(db, order_id):
        cents[t["kind"]] += to_cents(t["amount"])
    return cents["payment"], cents["refund"]


def snapshot(db: Db) -> Snapshot:
    """The records as normalised JSON: each table a list of records sorted by id (compares with ==)."""
    return {table: [copy.deepcopy(records[i]) for i in sorted(records)] for table, records in db.items()}


def differing_records(a: Snapshot, b: Snapshot) -> int:
    """How many records (by table and id) are missing from one snapshot or differ between the two."""
    count = 0
    for table in a.keys() | b.keys():
        left = {r["id"]: r for r in a.get(table, [])}
        right = {r["id"]: r for r in b.get(table, [])}
        count += sum(left.get(i) != right.get(i) for i in left.keys() | right.keys())
    return count


class PolicyViolation(Exception):
    """A request the policies forbid; the env records it and answers the model with the message."""

    def __init__(self, policy: str, detail: str):
        super().__init__(f"{REFUSAL_PREFIX} {policy!r}: {POLICIES[policy]} ({detail})")
        self.policy = policy


# --------------------------------------------------------------------------------------------------
# The environment
