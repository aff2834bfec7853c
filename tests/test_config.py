"""Config files: the demo loads; each malformed file gets one message naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from bandit_serve.config import load_config
from bandit_serve.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

ARMS = """
    arms:
      - {name: v1, model: "pkg.mod:f"}
      - {name: v2, model: {kind: sklearn, path: models/v2.joblib}}
"""
GOOD_POLICY = "    policy: {kind: thompson}\n"
GOOD_REWARD = "    reward: {kind: bernoulli}\n"


def experiment(
    arms: str = ARMS, policy: str = GOOD_POLICY, reward: str = GOOD_REWARD, extra: str = ""
) -> str:
    return "experiments:\n  - name: exp1\n" + arms.lstrip("\n") + policy + reward + extra


BAD_FILES: list[tuple[str, str, str]] = [
    ("empty", "", r"\(top level\): expected a mapping"),
    ("yaml syntax", "experiments: [\n", r"line \d+, column \d+: invalid YAML"),
    ("no experiments", "redis_url: redis://x\n", r"experiments: Field required"),
    ("unknown top key", experiment() + "colour: red\n", r"colour: Extra inputs are not permitted"),
    ("bad redis url", "redis_url: http://x\n" + experiment(), r"redis_url: String should match"),
    (
        "unknown policy kind",
        experiment(policy="    policy: {kind: softmax}\n"),
        r"experiments\[0\]\.policy: unknown kind 'softmax'; expected one of",
    ),
    (
        "policy without kind",
        experiment(policy="    policy: {alpha: 1}\n"),
        r"experiments\[0\]\.policy: Unable to extract tag using discriminator 'kind'",
    ),
    (
        "negative prior",
        experiment(policy="    policy: {kind: thompson, alpha: -1}\n"),
        r"experiments\[0\]\.policy\.alpha: Input should be greater than 0",
    ),
    (
        "epsilon above 1",
        experiment(policy="    policy: {kind: epsilon_greedy, epsilon: 1.5}\n"),
        r"experiments\[0\]\.policy\.epsilon: Input should be less than or equal to 1",
    ),
    (
        "typo in policy field",
        experiment(policy="    policy: {kind: ucb1, alpah: 2}\n"),
        r"experiments\[0\]\.policy\.alpah: Extra inputs are not permitted",
    ),
    (
        "floor too high",
        experiment(policy="    policy: {kind: ucb1, min_share: 0.6}\n"),
        r"experiments\[0\]: policy\.min_share 0\.6 times 2 arms exceeds 1",
    ),
    (
        "weights count",
        experiment(policy="    policy: {kind: fixed, weights: [1, 2, 3]}\n"),
        r"experiments\[0\]: policy\.weights has 3 entries for 2 arms",
    ),
    (
        "zero weights",
        experiment(policy="    policy: {kind: fixed, weights: [0, 0]}\n"),
        r"experiments\[0\]\.policy\.weights: weights must contain at least one positive",
    ),
    (
        "duplicate arms",
        experiment(
            arms="    arms:\n      - {name: v1, model: 'a:b'}\n      - {name: v1, model: 'a:c'}\n"
        ),
        r"experiments\[0\]: arm names must be unique; repeated: v1",
    ),
    (
        "no arms",
        experiment(arms="    arms: []\n"),
        r"experiments\[0\]\.arms: List should have at least 1 item",
    ),
    (
        "bad arm name",
        experiment(arms="    arms:\n      - {name: 'v 1', model: 'a:b'}\n"),
        r"experiments\[0\]\.arms\[0\]\.name: String should match pattern",
    ),
    (
        "unknown model kind",
        experiment(arms="    arms:\n      - {name: v1, model: {kind: torch, path: x}}\n"),
        r"experiments\[0\]\.arms\[0\]\.model: unknown kind 'torch'",
    ),
    (
        "bad callable",
        experiment(
            arms="    arms:\n      - {name: v1, model: {kind: callable, target: 'nocolon'}}\n"
        ),
        r"experiments\[0\]\.arms\[0\]\.model\.target: String should match pattern",
    ),
    (
        "unknown reward kind",
        experiment(reward="    reward: {kind: poisson}\n"),
        r"experiments\[0\]\.reward\.kind: Input should be 'bernoulli', 'bounded' or 'gaussian'",
    ),
    (
        "bounded without high",
        experiment(reward="    reward: {kind: bounded, low: 0}\n"),
        r"experiments\[0\]\.reward: bounded rewards need both low and high",
    ),
    (
        "low above high",
        experiment(reward="    reward: {kind: bounded, low: 5, high: 1}\n"),
        r"experiments\[0\]\.reward: low \(5\.0\) must be below high \(1\.0\)",
    ),
    (
        "default outside bounds",
        experiment(reward="    reward: {kind: bounded, low: 0, high: 10, default: 11}\n"),
        r"experiments\[0\]\.reward: default reward 11\.0 lies outside \[0\.0, 10\.0\]",
    ),
    (
        "zero wait",
        experiment(reward="    reward: {kind: bernoulli, wait_seconds: 0}\n"),
        r"experiments\[0\]\.reward\.wait_seconds: Input should be greater than 0",
    ),
    (
        "bad on_expiry",
        experiment(reward="    reward: {kind: bernoulli, on_expiry: keep}\n"),
        r"experiments\[0\]\.reward\.on_expiry: Input should be 'default' or 'drop'",
    ),
    (
        "ucb on gaussian",
        experiment(
            reward="    reward: {kind: gaussian, default: 0, error_reward: 0}\n",
            policy="    policy: {kind: ucb1}\n",
        ),
        r"experiments\[0\]: policy: ucb1 needs rewards in \[0, 1\]",
    ),
    (
        "kl_ucb on bounded",
        experiment(
            reward="    reward: {kind: bounded, low: 0, high: 5}\n",
            policy="    policy: {kind: kl_ucb}\n",
        ),
        r"experiments\[0\]: policy: kl_ucb needs reward kind bernoulli",
    ),
    (
        "gaussian without default",
        experiment(
            reward="    reward: {kind: gaussian}\n",
            policy="    policy: {kind: gaussian_thompson}\n",
        ),
        r"experiments\[0\]\.reward: gaussian rewards need a default reward, or on_expiry: drop",
    ),
    (
        "nan bound",
        experiment(reward="    reward: {kind: bounded, low: .nan, high: 1}\n"),
        r"experiments\[0\]\.reward\.low: Input should be a finite number",
    ),
    (
        "duplicate experiments",
        "experiments:\n" + experiment().split("\n", 1)[1] * 2,
        r"yaml: experiment names must be unique; repeated: exp1",
    ),
    (
        "guardrail unknown metric",
        experiment(extra="    guardrails: {rules: [{metric: cpu, max_ratio: 2}]}\n"),
        r"experiments\[0\]\.guardrails\.rules\[0\]\.metric: Input should be 'error_rate'",
    ),
    (
        "guardrail ratio at most 1",
        experiment(extra="    guardrails: {rules: [{metric: latency_p99, max_ratio: 0.9}]}\n"),
        r"experiments\[0\]\.guardrails\.rules\[0\]: max_ratio must be above 1; got 0\.9",
    ),
    (
        "guardrail ratio finer than the histogram",
        experiment(extra="    guardrails: {rules: [{metric: latency_p95, max_ratio: 1.03}]}\n"),
        r"rules\[0\]: max_ratio 1\.03 is finer than the latency histogram resolves",
    ),
    (
        "guardrail bound that does not fit the metric",
        experiment(extra="    guardrails: {rules: [{metric: error_rate, max_ratio: 2}]}\n"),
        r"rules\[0\]: metric error_rate takes exactly one of max_increase; got max_ratio",
    ),
    (
        "guardrail with two bounds",
        experiment(
            extra="    guardrails: {rules: [{metric: latency_p99, max_ratio: 2, max_seconds: 1}]}\n"
        ),
        r"rules\[0\]: metric latency_p99 takes exactly one of max_ratio or max_seconds",
    ),
    (
        "guardrails without rules",
        experiment(extra="    guardrails: {rules: []}\n"),
        r"experiments\[0\]\.guardrails\.rules: List should have at least 1 item",
    ),
    (
        "guardrails on one arm",
        experiment(
            arms='    arms: [{name: v1, model: "pkg.mod:f"}]\n',
            extra="    guardrails: {rules: [{metric: error_rate, max_increase: 0.02}]}\n",
        ),
        r"experiments\[0\]: guardrails compare arms with a baseline: they need at least 2 arms",
    ),
    (
        "baseline that is not an arm",
        experiment(extra="    baseline: v9\n"),
        r"experiments\[0\]: baseline 'v9' is not an arm; arms: v1, v2",
    ),
    (
        "gaussian without error_reward",
        experiment(
            reward="    reward: {kind: gaussian, default: 0}\n",
            policy="    policy: {kind: gaussian_thompson}\n",
        ),
        r"experiments\[0\]\.reward: gaussian rewards have no natural low value: give error_reward",
    ),
    (
        "error_reward outside the bounds",
        experiment(reward="    reward: {kind: bernoulli, error_reward: 2}\n"),
        r"experiments\[0\]\.reward: error_reward 2\.0 lies outside \[0\.0, 1\.0\]",
    ),
    (
        "bad input schema",
        experiment(extra="    input_schema: {type: 12}\n"),
        r"experiments\[0\]: input_schema is not a valid JSON Schema",
    ),
    (
        "notify without a url",
        experiment(extra="    notify: {url: ftp://x}\n"),
        r"experiments\[0\]\.notify\.url: String should match",
    ),
    (
        "negative sync",
        experiment(extra="    sync_interval_seconds: -1\n"),
        r"experiments\[0\]\.sync_interval_seconds: Input should be greater than 0",
    ),
    (
        "unknown durability",
        experiment(extra="    durability: replica\n"),
        r"experiments\[0\]\.durability: Input should be 'primary' or 'replicated'$",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_config_names_file_field_and_problem(
    tmp_path: Path, case: str, text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert len(message.splitlines()) == 1, message  # one problem, one line
    assert __import__("re").search(expected, message), message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read the file"):
        load_config(tmp_path / "nope.yaml")


def test_demo_config_loads_and_builds() -> None:
    cfg = load_config(ROOT / "configs" / "demo.yaml")
    exp = cfg.experiments[0]
    assert exp.arm_names == ["v1", "v2", "v3"]
    assert exp.baseline_arm == "v1" and exp.guardrails is not None
    assert exp.build_policy().kind == "thompson"
    settings = exp.store_settings()
    assert (settings.low, settings.high, settings.default_reward) == (0.0, 1.0, 0.0)


def test_guardrails_and_error_handling_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        experiment(
            reward="    reward: {kind: gaussian, default: 0, error_reward: -3}\n",
            policy="    policy: {kind: gaussian_thompson}\n",
            extra="    baseline: v2\n    guardrails:\n      rules:\n"
            "        - {metric: error_rate, max_increase: 0.02}\n"
            "        - {metric: latency_p99, max_ratio: 1.5}\n"
            "        - {metric: latency_p99, max_seconds: 0.25}\n"
            "        - {metric: reward, max_decrease: 0.05}\n",
        )
    )
    exp = load_config(path).experiments[0]
    assert exp.baseline_arm == "v2"
    g = exp.guardrails
    assert g is not None
    assert (g.min_calls, g.alpha, g.check_interval_seconds, g.on_violation) == (
        200,
        0.01,
        5.0,
        "rollback",
    )
    assert g.alpha_per_rule == 0.0025
    assert [r.id for r in g.rules] == [
        "error_rate max_increase=0.02",
        "latency_p99 max_ratio=1.5",
        "latency_p99 max_seconds=0.25",
        "reward max_decrease=0.05",
    ]
    settings = exp.store_settings()
    assert (settings.on_model_error, settings.error_reward) == ("low", -3.0)
    path.write_text(experiment())
    plain = load_config(path).experiments[0]
    assert plain.baseline_arm == "v1" and plain.guardrails is None
    assert plain.store_settings().error_reward == 0.0  # bernoulli: the low end


def test_model_shorthands_and_defaults(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(experiment(reward="    reward: {kind: bounded, low: -2, high: 8}\n"))
    exp = load_config(path).experiments[0]
    assert exp.arms[0].model.kind == "callable"
    assert exp.arms[1].model.kind == "sklearn"
    assert exp.reward.default_reward == -2.0  # a missing reward counts as the worst one
    assert exp.reward.wait_seconds == 600.0


def test_durability_is_the_experiments_own_or_the_stores(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    for given, expected in [("replicated", "replicated"), ("primary", "primary"), (None, None)]:
        extra = f"    durability: {given}\n" if given else ""
        path.write_text(experiment(extra=extra))
        exp = load_config(path).experiments[0]
        assert exp.durability == expected
        assert exp.store_settings().durability == expected  # None: the store's setting
