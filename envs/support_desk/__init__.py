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


from rlvr.envs.support_desk.env import SupportDeskEnv
from rlvr.envs.support_desk.tasks import support_desk_tasks

__all__ = ["SupportDeskEnv", "support_desk_tasks"]
