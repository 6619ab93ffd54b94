"""The support-desk environment: serve a customer's request against a stateful shop backend with policies.

Each task is a customer's message ("Hi, I'm <email>. My order #4821 arrived broken, please refund it.")
and a small backend (users, orders, transactions) generated from the task's `db_seed`. The agent looks
things up and acts with tools; the written POLICIES (in the system prompt) are enforced by the backend:
a call that breaks one is refused with a message citing the policy and recorded in `policy_violations`.
Some requests are forbidden by policy; the right move there is to explain and change nothing.

Success (the `final_state` reward) is the backend's records equal to those the gold calls leave behind;
violations are scored separately (`policy_compliance`, rewards/support_desk.py). Calls of one step run one
after another, each anchored to the state it starts from, so per-call credit compares like with like.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import StepResult, ToolEnv, tool

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


def _cents(amount: float) -> int:
    return round(amount * 100)


def _dollars(cents: int) -> float:
    return round(cents / 100, 2)


# --------------------------------------------------------------------------------------------------
# The backend's records


def _random_address(rng: random.Random) -> str:
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
                                "address": _random_address(rng)}
        for day in sorted(rng.sample(range(1, 300), rng.randint(1, 4))):
            order_id = next(order_ids)
            items = [{"product": product, "quantity": rng.randint(1, 3), "unit_price": price}
                     for product, price in rng.sample(_PRODUCTS, rng.randint(1, 3))]
            total = _dollars(sum(_cents(i["unit_price"]) * i["quantity"] for i in items))
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
        cents[t["kind"]] += _cents(t["amount"])
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


class SupportDeskEnv(ToolEnv):
    """A customer's request against a policy-enforcing backend; success = the records the gold calls leave."""

    name = "support_desk"
    system_prompt = (
        "You are a customer-support agent for an online shop. Help the customer who wrote in, using the "
        "tools. Look the customer up by their email first, and check orders and transactions before "
        "acting. Policies (the backend refuses calls that break them):\n"
        + "\n".join(f"- {name}: {text}" for name, text in POLICIES.items())
        + "\nWhen a request breaks a policy, do not attempt it: explain to the customer which policy "
        "prevents it. Finish with a short reply to the customer."
    )
    rewards = {"final_state": 1.0, "policy_compliance": 0.0, "tool_call_validity": 0.0}

    def __init__(self, task: Task, seed: int = 0, tool_timeout_s: float = 10.0):
        super().__init__(task, seed, tool_timeout_s)
        if "db_seed" not in task.metadata:
            raise ValueError(f"support_desk task {task.id} has no metadata.db_seed to build its backend from")
        self.db = generate_db(task.metadata["db_seed"])
        self.customer_id: int | None = task.metadata.get("customer_id")  # who wrote in (own_account_only)
        self.policy_violations: list[dict[str, Any]] = []
        self._last_progress: float | None = None  # of the state-changing call that ran last

    # -- reads ---------------------------------------------------------------------------------------

    @tool
    def find_user(self, email: str) -> str:
        """Find a user by email address.

        Args:
            email: the user's email address
        """
        for user in self.db["users"].values():
            if user["email"] == email.strip().lower():
                return json.dumps(user)
        raise ValueError(f"no user has the email {email!r}")

    @tool
    def get_order(self, order_id: int) -> str:
        """Show an order: its user, status, date placed, items and total.

        Args:
            order_id: the order's number, e.g. 4821 for "#4821"
        """
        return json.dumps(self._order(order_id))

    @tool
    def list_orders(self, user_id: int) -> str:
        """List a user's orders (id, status, date placed, total), oldest first.

        Args:
            user_id: the user's id, as given by find_user
        """
        self._user(user_id)
        summary = ("id", "status", "placed", "total")
        return json.dumps([{k: o[k] for k in summary} for o in orders_of(self.db, user_id)])

    @tool
    def get_transactions(self, order_id: int) -> str:
        """List an order's transactions: its payment and any refunds.

        Args:
            order_id: the order's number
        """
        self._order(order_id)
        return json.dumps(transactions_of(self.db, order_id))

    # -- actions ---------------------------------------------------------------------------------------

    @tool
    def refund_transaction(self, transaction_id: int, amount: float) -> str:
        """Refund part or all of a payment; the refund is recorded as a new transaction of the order.

        Args:
            transaction_id: the id of the order's payment transaction, as given by get_transactions
            amount: how much to refund, in dollars
        """
        payment = self.db["transactions"].get(transaction_id)
        if payment is None:
            raise ValueError(f"no transaction has the id {transaction_id}")
        if payment["kind"] != "payment":
            raise ValueError(f"transaction {transaction_id} is a {payment['kind']}; "
                             "refund a payment transaction")
        cents = _cents(amount)
        if cents <= 0:
            raise ValueError(f"the amount must be positive, got {amount}")
        order = self.db["orders"][payment["order_id"]]

        def refund() -> str:
            self._check_own(order["user_id"], f"order {order['id']}")
            if order["status"] != "delivered":
                raise PolicyViolation("refund_delivered_only", f"order {order['id']} is {order['status']}")
            paid, refunded = paid_and_refunded(self.db, order["id"])
            if refunded + cents > paid:
                raise PolicyViolation("refund_within_paid", f"order {order['id']}: paid "
                                      f"${_dollars(paid):.2f}, already refunded ${_dollars(refunded):.2f}")
            refund_id = self._add_transaction(order["id"], "refund", _dollars(cents))
            return f"refunded ${_dollars(cents):.2f} of order {order['id']} (refund transaction {refund_id})"

        return self._act("refund_transaction", {"transaction_id": transaction_id, "amount": amount}, refund)

    @tool
    def cancel_order(self, order_id: int) -> str:
        """Cancel an order and refund what was paid for it.

        Args:
            order_id: the order's number
        """
        order = self._order(order_id)

        def cancel() -> str:
            self._check_own(order["user_id"], f"order {order_id}")
            if order["status"] != "pending":
                raise PolicyViolation("cancel_pending_only", f"order {order_id} is {order['status']}")
            order["status"] = "cancelled"
            paid, refunded = paid_and_refunded(self.db, order_id)
            if paid == refunded:
                return f"order {order_id} cancelled"
            outstanding = _dollars(paid - refunded)
            refund_id = self._add_transaction(order_id, "refund", outstanding)
            return f"order {order_id} cancelled; refunded ${outstanding:.2f} (transaction {refund_id})"

        return self._act("cancel_order", {"order_id": order_id}, cancel)

    @tool
    def update_address(self, user_id: int, address: str) -> str:
        """Change a user's postal address.

        Args:
            user_id: the user's id, as given by find_user
            address: the new address, e.g. "12 Mill Lane, Riverton"
        """
        user = self._user(user_id)
        cleaned = " ".join(address.split())
        if not cleaned:
            raise ValueError("the address is empty")

        def update() -> str:
            self._check_own(user_id, f"user {user_id}")
            shipped = [o["id"] for o in orders_of(self.db, user_id) if o["status"] == "shipped"]
            if shipped:
                raise PolicyViolation("address_not_in_transit", f"order {shipped[0]} is shipped")
            user["address"] = cleaned
            return f"address of user {user_id} changed to {cleaned!r}"

        return self._act("update_address", {"user_id": user_id, "address": address}, update)

    # -- helpers ---------------------------------------------------------------------------------------

    def _user(self, user_id: int) -> dict[str, Any]:
        if user_id not in self.db["users"]:
            raise ValueError(f"no user has the id {user_id}")
        return self.db["users"][user_id]

    def _order(self, order_id: int) -> dict[str, Any]:
        if order_id not in self.db["orders"]:
            raise ValueError(f"no order has the id {order_id}")
        return self.db["orders"][order_id]

    def _add_transaction(self, order_id: int, kind: str, amount: float) -> int:
        transaction_id = max(self.db["transactions"]) + 1  # the same id whichever way the state was reached
        self.db["transactions"][transaction_id] = {"id": transaction_id, "order_id": order_id, "kind": kind,
                                                   "amount": amount}
        return transaction_id

    def _check_own(self, owner_id: int, what: str) -> None:
        if self.customer_id is not None and owner_id != self.customer_id:
            raise PolicyViolation("own_account_only", f"{what} belongs to another user")

    def _act(self, tool_name: str, arguments: dict[str, Any], action: Callable[[], str]) -> str:
        """Run a state-changing action: a refusal is recorded and answered; progress is noted for credit."""
        expected = (self.task.expected_state or {}).get("db")
        before = differing_records(snapshot(self.db), expected) if expected is not None else None
        try:
            message = action()
        except PolicyViolation as violation:
            self.policy_violations.append({"tool": tool_name, "arguments": arguments,
                                           "policy": violation.policy})
            self._last_progress = -1.0
            return str(violation)
        if before is None:
            self._last_progress = None
        else:
            after = differing_records(snapshot(self.db), expected)
            self._last_progress = 1.0 if after < before else -1.0 if after > before else 0.0
        return message

    # -- the interface -------------------------------------------------------------------------------

    async def step(self, calls: list[ToolCall]) -> StepResult:
        """Run the calls one after another: each sees (and is anchored to) the state the previous left."""
        for call in calls:
            await super().step([call])
        return StepResult(calls=calls, done=self.done)

    def final_state(self) -> dict[str, Any]:
        return {"db": snapshot(self.db), "policy_violations": copy.deepcopy(self.policy_violations)}

    def state_key(self) -> str:
        """A hash of the records, so calls made from equal states compare however the state was reached."""
        return hashlib.sha1(json.dumps(snapshot(self.db), sort_keys=True).encode()).hexdigest()[:16]

    def call_progress(self, call: ToolCall) -> float | None:
        """0 for reads; for actions +1 when the records get closer to the expected ones, -1 when a policy
        refuses the call or the records move away, 0 when they are as far as before."""
        if call.name not in STATE_CHANGING_TOOLS:
            return 0.0
        progress, self._last_progress = self._last_progress, None
        return progress

    @classmethod
    def tasks(cls, n: int, seed: int = 0, split: str = "train",
              scenarios: list[str] | None = None) -> list[Task]:
        """Customer requests, cycling through the scenario kinds (all of SCENARIOS unless `scenarios`)."""
        return support_desk_tasks(n, seed, split, scenarios)


# --------------------------------------------------------------------------------------------------
# Scenarios: each picks a customer and a request its backend can host, or None when it has none


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
    amount = _dollars(_cents(item["unit_price"]) * item["quantity"])
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
        address = _random_address(rng)
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
