"""SupportDeskEnv: look-up and action tools on the backend, with every policy enforced."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Callable

from rlvr.core.contract import Task, ToolCall
from rlvr.envs.base import ToolEnv, tool
from rlvr.envs.support_desk.backend import (POLICIES, STATE_CHANGING_TOOLS, PolicyViolation,
                                            differing_records, generate_db, orders_of, paid_and_refunded,
                                            snapshot, to_cents, to_dollars, transactions_of)


class SupportDeskEnv(ToolEnv):
    """A customer's request against a policy-enforcing backend; success = the records the gold calls leave."""

    name = "support_desk"
    sequential_calls = True  # the tools change the records: each call sees the state the previous left
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
        cents = to_cents(amount)
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
                                      f"${to_dollars(paid):.2f}, already refunded ${to_dollars(refunded):.2f}")
            refund_id = self._add_transaction(order["id"], "refund", to_dollars(cents))
            return f"refunded ${to_dollars(cents):.2f} of order {order['id']} (refund transaction {refund_id})"

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
            outstanding = to_dollars(paid - refunded)
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
        from rlvr.envs.support_desk.tasks import support_desk_tasks  # tasks.py replays gold calls on this env

        return support_desk_tasks(n, seed, split, scenarios)


# --------------------------------------------------------------------------------------------------
# Scenarios: each picks a customer and a request its backend can host, or None when it has none
