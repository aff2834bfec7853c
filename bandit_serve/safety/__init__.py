"""The safety plane, beside the policy: guardrail checks (:mod:`.guardrails`), the arm and
experiment state machine (:mod:`.actions`), and event notifications (:mod:`.notify`).
The audit log itself lives in the store."""
