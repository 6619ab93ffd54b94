import asyncio
import json

import pytest

from rlvr.core.contract import Task, ToolCall, ToolCallError, Trajectory
from rlvr.envs.registry import load_env
from rlvr.envs.support_desk import SupportDeskEnv, support_desk_tasks
from rlvr.envs.support_desk.backend import POLICIES, generate_db, transactions_of
from rlvr.envs.support_desk.tasks import SCENARIOS
from rlvr.rewards.registry import load_reward
from rlvr.rewards.support_desk import policy_compliance

# In the backend of db_seed 7: Gita (867) has three delivered, unrefunded orders (5928 paid by transaction
# 29997, $151) and nothing in transit; Keiko (580) has a delivered order refunded in full (9803), a pending
# one (5745) and a shipped one (8217); Dmitri (687) has a pending order 8633; Nico (269) a delivered order
# paid by 65490. The largest transaction id is 89271.
GITA, KEIKO = 867, 580


def _env(customer_id, expected_db=None):
    task = Task(id="t", env="support_desk", prompt="help",
                metadata={"db_seed": 7, "customer_id": customer_id},
                expected_state=None if expected_db is None else {"db": expected_db})
    return SupportDeskEnv(task)


def _call(name, **arguments):
    return ToolCall(name=name, arguments=arguments)


def _run(env, *calls):
    asyncio.run(env.step(list(calls)))
    return calls


def _replay(task):
    env = SupportDeskEnv(task)
    calls = _run(env, *(ToolCall(**c) for c in task.gold_calls))
    return env, calls


def _trajectory(calls, final_state):
    return Trajectory(id="traj", task_id="t", group_id="g", prompt_ids=[1], completion_ids=[2, 3],
                      loss_mask=[1, 1], logprobs=[-0.5, -0.5], tool_calls=list(calls),
                      final_state=final_state)


def test_registered_with_its_tools_rewards_and_policies():
    env = load_env("support_desk")(support_desk_tasks(1)[0])
    messages, tools = env.reset()
    assert env.rewards == {"final_state": 1.0, "policy_compliance": 0.0, "tool_call_validity": 0.0}
    assert {t["function"]["name"] for t in tools} == {
        "find_user", "get_order", "list_orders", "get_transactions", "refund_transaction", "cancel_order",
        "update_address"}
    assert all(text in messages[0]["content"] for text in POLICIES.values())
    assert load_reward("policy_compliance") is policy_compliance


def test_backend_is_deterministic_in_its_seed():
    db = generate_db(7)
    assert db == generate_db(7) and db != generate_db(8)
    assert (len(db["users"]), len(db["orders"]), len(db["transactions"])) == (7, 14, 19)
    for order in db["orders"].values():  # every order was paid in full when placed
        payments = [t["amount"] for t in transactions_of(db, order["id"]) if t["kind"] == "payment"]
        assert payments == [order["total"]]


def test_lookups():
    env = _env(GITA)
    user, orders, order, transactions, nobody, no_order = _run(
        env, _call("find_user", email=" Gita.Moreau@mail.test"), _call("list_orders", user_id=GITA),
        _call("get_order", order_id=5928), _call("get_transactions", order_id=9803),
        _call("find_user", email="ghost@example.com"), _call("get_order", order_id=1))
    assert json.loads(user.result) == {"id": 867, "name": "Gita Moreau", "email": "gita.moreau@mail.test",
                                       "address": env.db["users"][GITA]["address"]}
    assert [o["id"] for o in json.loads(orders.result)] == [5928, 8936, 3380]
    assert json.loads(order.result)["user_id"] == GITA and json.loads(order.result)["total"] == 151.0
    assert json.loads(transactions.result) == [
        {"id": 54843, "order_id": 9803, "kind": "refund", "amount": 159.5},
        {"id": 70968, "order_id": 9803, "kind": "payment", "amount": 159.5}]
    assert nobody.error == ToolCallError.raised
    assert "no user has the email 'ghost@example.com'" in nobody.result
    assert no_order.error == ToolCallError.raised and "no order has the id 1" in no_order.result
    assert all(c.scores["progress"] == 0.0 for c in (user, orders, order, transactions))


def test_allowed_actions_change_the_records():
    env = _env(GITA)
    part, rest, address = _run(env, _call("refund_transaction", transaction_id=29997, amount=50),
                               _call("refund_transaction", transaction_id=29997, amount=101.0),
                               _call("update_address", user_id=GITA, address="  9 Elm   Lane, Riverton "))
    assert part.result == "refunded $50.00 of order 5928 (refund transaction 89272)"
    assert rest.result == "refunded $101.00 of order 5928 (refund transaction 89273)"
    assert env.db["transactions"][89273] == {"id": 89273, "order_id": 5928, "kind": "refund", "amount": 101.0}
    assert env.db["users"][GITA]["address"] == "9 Elm Lane, Riverton" and address.error is None
    env = _env(KEIKO)
    (cancel,) = _run(env, _call("cancel_order", order_id=5745))
    assert cancel.result == "order 5745 cancelled; refunded $125.22 (transaction 89272)"
    assert env.db["orders"][5745]["status"] == "cancelled"
    assert env.db["transactions"][89272] == {"id": 89272, "order_id": 5745, "kind": "refund",
                                             "amount": 125.22}
    assert env.final_state()["policy_violations"] == []


def test_policy_violations_are_refused_recorded_and_change_nothing():
    env = _env(KEIKO)
    before = env.final_state()["db"]
    calls = _run(env, _call("cancel_order", order_id=8217),
                 _call("refund_transaction", transaction_id=70426, amount=42),
                 _call("refund_transaction", transaction_id=70968, amount=1),
                 _call("update_address", user_id=KEIKO, address="1 Mill Road, Lakeside"),
                 _call("cancel_order", order_id=8633),
                 _call("refund_transaction", transaction_id=65490, amount=5))
    policies = ["cancel_pending_only", "refund_delivered_only", "refund_within_paid",
                "address_not_in_transit", "own_account_only", "own_account_only"]
    assert env.final_state() == {"db": before, "policy_violations": [
        {"tool": c.name, "arguments": c.arguments, "policy": p} for c, p in zip(calls, policies)]}
    for call, policy in zip(calls, policies):
        assert call.error is None
        assert call.result.startswith(f"refused by policy {policy!r}: {POLICIES[policy]}")
    assert "(order 8217 is shipped)" in calls[0].result
    assert "already refunded $159.50" in calls[2].result


def test_bad_requests_are_errors_not_violations():
    env = _env(GITA)
    calls = _run(env, _call("refund_transaction", transaction_id=54843, amount=1),
                 _call("refund_transaction", transaction_id=29997, amount=0),
                 _call("update_address", user_id=GITA, address="   "), _call("cancel_order", order_id=42))
    messages = ["is a refund; refund a payment transaction", "must be positive", "address is empty",
                "no order has the id 42"]
    for call, message in zip(calls, messages):
        assert call.error == ToolCallError.raised and message in call.result
    assert env.policy_violations == []


def test_tasks_are_deterministic_and_cycle_through_every_scenario():
    tasks = support_desk_tasks(20, seed=5)
    assert tasks == support_desk_tasks(20, seed=5)
    other = support_desk_tasks(20, seed=6)
    assert {t.metadata["db_seed"] for t in tasks}.isdisjoint(t.metadata["db_seed"] for t in other)
    assert [t.prompt for t in tasks] != [t.prompt for t in other]
    for block in (tasks[:10], tasks[10:]):
        assert sorted(t.metadata["scenario"] for t in block) == sorted(SCENARIOS)
    assert tasks[0].id == "support_desk-train-5-0"
    assert support_desk_tasks(1, split="test")[0].id == "support_desk-test-0-0"
    only = support_desk_tasks(4, scenarios=["cancel_order"])
    assert {t.metadata["scenario"] for t in only} == {"cancel_order"}
    with pytest.raises(ValueError, match="unknown support_desk scenario"):
        support_desk_tasks(1, scenarios=["teleport"])
    with pytest.raises(ValueError, match="no metadata.db_seed"):
        SupportDeskEnv(Task(id="x", env="support_desk", prompt="hi"))


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_gold_calls_reach_the_expected_records(kind):
    for task in support_desk_tasks(3, seed=11, scenarios=[kind]):
        email = task.metadata["customer_email"]
        assert email in task.prompt
        assert task.gold_calls[0] == {"name": "find_user", "arguments": {"email": email}}
        forbidden = task.metadata["forbidden_by"]
        idle = SupportDeskEnv(task)  # doing nothing is right exactly when the request is forbidden
        assert (idle.final_state()["db"] == task.expected_state["db"]) == (forbidden is not None)
        env, calls = _replay(task)
        assert env.final_state() == {**task.expected_state, "policy_violations": []}
        assert [c.scores["progress"] for c in calls] == [0.0] * (len(calls) - 1) + [0.0 if forbidden else 1.0]


def _order_id(task):
    return next(c["arguments"]["order_id"] for c in task.gold_calls if c["name"] == "get_order")


def _refund_one_dollar(task, db):
    payment = next(t for t in transactions_of(db, _order_id(task)) if t["kind"] == "payment")
    return _call("refund_transaction", transaction_id=payment["id"], amount=1.0)


@pytest.mark.parametrize("kind, action", [
    ("refund_undelivered_order", _refund_one_dollar),
    ("refund_already_refunded", _refund_one_dollar),
    ("refund_other_users_order", _refund_one_dollar),
    ("cancel_shipped_order", lambda task, db: _call("cancel_order", order_id=_order_id(task))),
    ("change_address_in_transit", lambda task, db: _call(
        "update_address", user_id=task.metadata["customer_id"], address="1 New Street, Fairview")),
])
def test_forbidden_requests_are_refused(kind, action):
    task = support_desk_tasks(1, seed=2, scenarios=[kind])[0]
    env = SupportDeskEnv(task)
    (call,) = _run(env, action(task, env.db))
    assert call.result.startswith("refused by policy") and call.scores["progress"] == -1.0
    assert env.final_state()["db"] == task.expected_state["db"]  # the records are right: nothing changed
    assert [v["policy"] for v in env.final_state()["policy_violations"]] == [task.metadata["forbidden_by"]]


def test_progress_follows_the_distance_to_the_expected_records():
    goal = _env(GITA)
    _run(goal, _call("refund_transaction", transaction_id=29997, amount=151.0))
    env = _env(GITA, expected_db=goal.final_state()["db"])  # one record off: the refund 89272 is missing
    address = env.db["users"][GITA]["address"]
    calls = _run(env, _call("update_address", user_id=GITA, address="1 Wrong Way, Nowhere"),  # two off
                 _call("refund_transaction", transaction_id=29997, amount=1.0),  # 89272 exists, wrong amount
                 _call("update_address", user_id=GITA, address=address),  # one off again
                 _call("refund_transaction", transaction_id=29997, amount=150.0))  # an extra refund 89273
    assert [c.scores["progress"] for c in calls] == [-1.0, 0.0, 1.0, -1.0]
    assert env.final_state()["db"] != goal.final_state()["db"]


def test_state_key_hashes_the_records():
    a, b = _env(GITA), _env(GITA)
    start = a.state_key()
    lookups = _run(a, _call("find_user", email="gita.moreau@mail.test"), _call("get_order", order_id=5928))
    assert a.state_key() == b.state_key() == start and [c.anchor for c in lookups] == [start, start]
    first, second = _run(a, _call("refund_transaction", transaction_id=29997, amount=10),
                         _call("refund_transaction", transaction_id=29997, amount=10))
    # calls of one step run in turn, each anchored to the state it started from
    assert first.anchor == start and second.anchor not in (start, a.state_key())
    _run(b, _call("refund_transaction", transaction_id=29997, amount=10))
    _run(b, _call("find_user", email="gita.moreau@mail.test"),
         _call("refund_transaction", transaction_id=29997, amount=10))
    assert a.state_key() == b.state_key()  # equal records, reached by different call sequences


def test_policy_compliance():
    task = support_desk_tasks(1, seed=4, scenarios=["cancel_shipped_order"])[0]
    env, calls = _replay(task)
    score = policy_compliance(_trajectory(calls, env.final_state()), task)
    assert (score.total, score.components, score.calls) == (1.0, {"violations": 0.0}, [None] * len(calls))
    refused = _run(env, _call("cancel_order", order_id=_order_id(task)), _call("find_user", email="x@y.z"))
    score = policy_compliance(_trajectory(calls + refused, env.final_state()), task)
    assert (score.total, score.components) == (0.0, {"violations": 1.0})
    assert score.calls == [None] * len(calls) + [-1.0, None]


def test_policy_compliance_credits_the_refused_one_of_identical_calls():
    env = _env(GITA)
    calls = _run(env, _call("refund_transaction", transaction_id=29997, amount=100),
                 _call("refund_transaction", transaction_id=29997, amount=100))  # $200 of $151: refused
    score = policy_compliance(_trajectory(calls, env.final_state()), env.task)
    assert score.total == 0.0 and score.calls == [None, -1.0]


def test_policy_compliance_needs_the_violations():
    task = Task(id="t", env="support_desk", prompt="p")
    for state in (None, {"db": {}}):
        with pytest.raises(ValueError, match="no final_state.policy_violations"):
            policy_compliance(_trajectory([], state), task)
