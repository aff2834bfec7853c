"""Model references: a joblib-saved scikit-learn estimator and importable callables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from bandit_serve.config import CallableModel, load_config
from bandit_serve.models import LoadedModel

ROOT = Path(__file__).resolve().parents[1]


def test_sklearn_model_from_a_config_relative_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    (tmp_path / "models").mkdir()
    joblib.dump(LogisticRegression().fit(x, y), tmp_path / "models" / "m.joblib")
    (tmp_path / "cfg.yaml").write_text(
        "experiments:\n  - name: e\n    arms: [{name: a, model: models/m.joblib}]\n"
        "    policy: {kind: fixed}\n    reward: {kind: bernoulli}\n"
    )
    ref = load_config(tmp_path / "cfg.yaml").experiments[0].arms[0].model
    assert Path(getattr(ref, "path", "")).is_absolute()  # replicas do not share our cwd
    model = LoadedModel(ref)
    assert model.predict([3.0, 3.0, 0.0]) == 1
    assert model.predict([[-3.0, -3.0, 0.0], [3.0, 3.0, 0.0]]) == [0, 1]
    batch = [[3.0, 3.0, 0.0], [-3.0, -3.0, 0.0], [2.0, 1.0, 5.0]]
    assert model.predict_many(batch) == [model.predict(b) for b in batch]


def test_missing_model_file_and_non_callable_target_are_clear(tmp_path: Path) -> None:
    from bandit_serve.config import SklearnModel

    with pytest.raises(FileNotFoundError, match="does not exist"):
        LoadedModel(SklearnModel(kind="sklearn", path=str(tmp_path / "none.joblib")))
    with pytest.raises(TypeError, match="is not callable"):
        LoadedModel(CallableModel(kind="callable", target="bandit_serve.store.base:REWARD_SCALE"))


async def test_async_and_sync_callables() -> None:
    model = LoadedModel(CallableModel(kind="callable", target="tests.fixtures.models:echo_a"))
    assert await model.apredict(5) == {"arm": "a", "inputs": 5}
    assert model.predict_many([1, 2]) == [{"arm": "a", "inputs": 1}, {"arm": "a", "inputs": 2}]


def test_demo_models_are_built_on_first_use_and_v2_is_stronger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a fresh process, as a replica starts: the demo keeps the models it has loaded for
    the life of its process, so only a new process shows the first use."""
    from bandit_serve import demo

    monkeypatch.setenv("BANDIT_SERVE_HOME", str(tmp_path))  # the child process inherits it
    paths = [demo.model_path(v) for v in ("v1", "v2")]
    assert not any(p.exists() for p in paths)
    code = (
        "import json\n"
        "from bandit_serve import demo\n"
        "acc = [demo.accuracy('v1'), demo.accuracy('v2')]\n"
        "x, _ = demo.traffic()\n"
        "print(json.dumps([*acc, demo.predict_v2(x[0].tolist())]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    acc1, acc2, digit = json.loads(run.stdout.splitlines()[-1])
    assert all(p.is_file() for p in paths)
    assert 0.7 < acc1 < acc2 - 0.05
    assert digit in range(10)


def test_demo_models_build_once_when_many_threads_ask_at_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh process whose first requests arrive together in a thread pool (the local
    engine, a ModelVersion): every request is answered. Before, each thread built the
    model and renamed the same temporary file, and all but one failed (a 502 blamed on
    the arm; seen in CI)."""
    monkeypatch.setenv("BANDIT_SERVE_HOME", str(tmp_path))
    code = (
        "import json\n"
        "from concurrent.futures import ThreadPoolExecutor\n"
        "from bandit_serve import demo\n"
        "x, _ = demo.traffic()\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    got = list(pool.map(lambda i: demo.predict_v1(x[i].tolist()), range(16)))\n"
        "print(json.dumps(got))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert all(d in range(10) for d in json.loads(run.stdout.splitlines()[-1]))
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["digits-v1.joblib"]


# -- input contracts and references of every kind ------------------------------------------


def test_input_contracts_by_shape_and_element_type() -> None:
    from bandit_serve.models import InputContract

    rows = InputContract(3)  # scikit-learn's: the words it always used
    assert rows.problem([1, 2.5, -3]) is None and rows.problem([[1, 2, 3], [4, 5, 6]]) is None
    assert rows.problem([1.0, 2.0]) == (
        "inputs must be one row of 3 numbers or a list of such rows; the row has 2"
    )
    assert rows.problem([[1, 2, 3], [1, 2]]) is not None
    assert rows.problem([1, 2, float("nan")]) is not None and rows.problem([1, 2, True]) is not None
    ints = InputContract(shape=(2, None), dtype="int32")  # e.g. ONNX [batch, 2, seq] int32
    assert ints.problem([[1, 2, 3], [4, 5, 6]]) is None  # one item
    assert ints.problem([[[1], [2]], [[3], [4]]]) is None  # two items of the same shape
    assert "not 1 as before" in (ints.problem([[[1], [2]], [[3, 4], [5, 6]]]) or "")
    assert "int32's range" in (ints.problem([[1, 2**40], [3, 4]]) or "")
    assert ints.problem([[1.0, 2], [3, 4]]) is not None  # integers only
    text = InputContract(shape=(), dtype="string")
    assert text.problem("hi") is None and text.problem(["a", "b"]) is None
    assert text.problem([1]) is not None
    fixed = InputContract(2, rows=3)  # a model whose batch axis is 3
    assert fixed.problem([[1, 2]] * 3) is None
    assert fixed.problem([1, 2]) == "inputs must be a list of 3 such rows: one row of 2 numbers"
    chat = InputContract(form="chat")
    assert chat.problem("hi") is None and chat.problem([{"role": "user", "content": "x"}]) is None
    assert chat.problem([{"role": "user"}]) is not None and chat.problem(3) is not None
    for c in (rows, ints, text, fixed, chat):
        assert InputContract.from_dict(c.to_dict()) == c  # as a replica sends it


def test_references_of_the_new_kinds_validate_their_shapes() -> None:
    from pydantic import ValidationError

    from bandit_serve.config import MODEL_REF
    from bandit_serve.config.models import DeploymentModel, HttpModel, OnnxModel

    assert MODEL_REF.validate_python({"kind": "onnx", "path": "m.onnx"}) == OnnxModel(
        kind="onnx", path="m.onnx", providers=["CPUExecutionProvider"]
    )
    ref = MODEL_REF.validate_python({"kind": "deployment", "app": "ranking", "deployment": "V2"})
    assert isinstance(ref, DeploymentModel)
    http = MODEL_REF.validate_python(
        {
            "kind": "http",
            "url": "http://10.0.0.5:8080/v2/models/ranker/infer",
            "protocol": "kserve-v2",
            "timeout_s": 2.0,
            "headers_from_env": {"Authorization": "RANKER_TOKEN"},
        }
    )
    assert isinstance(http, HttpModel) and http.protocol == "kserve-v2"
    bad: list[tuple[dict[str, Any], str]] = [
        ({"url": "ftp://h/x"}, "url must be http"),
        ({"url": "http://user:pw@h/x"}, "must not carry credentials"),
        ({"headers_from_env": {"Authorization": "Bearer abc"}}, "name an environment variable"),
        ({"headers_from_env": {"Bad Header": "X"}}, "not an HTTP header name"),
        ({"protocol": "openai-chat"}, "needs model"),
        ({"model": "gpt"}, "for protocol openai-chat only"),
        ({"protocol": "openai-chat", "model": "m", "body": {"stream": True}}, "must not set"),
        ({"protocol": "kserve-v2"}, "ends in /v2/models/NAME"),
        ({"timeout_s": 0}, "greater than 0"),
        ({"providers": []}, "Extra inputs"),
    ]
    for change, message in bad:
        with pytest.raises(ValidationError, match=message):
            MODEL_REF.validate_python({"kind": "http", "url": "http://h/p", **change})
    with pytest.raises(ValidationError, match="onnxruntime names"):
        MODEL_REF.validate_python({"kind": "onnx", "path": "m.onnx", "providers": ["cuda"]})


def test_a_deployment_arm_is_not_loaded_in_a_process() -> None:
    from bandit_serve.config import AppConfig
    from bandit_serve.errors import ConfigError
    from bandit_serve.service.local import LocalModels

    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": "e",
                    "arms": [
                        {
                            "name": "r",
                            "model": {"kind": "deployment", "app": "a", "deployment": "d"},
                        }
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli"},
                }
            ]
        }
    )
    with pytest.raises(ConfigError, match="only the Ray Serve engine can call it"):
        LocalModels(cfg)


def test_check_without_a_ray_cluster_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bandit_serve.cli import _unloadable
    from tests.conftest import free_port

    (tmp_path / "cfg.yaml").write_text(
        "experiments:\n  - name: e\n    arms:\n"
        "      - {name: a, model: 'tests.fixtures.models:echo_a'}\n"
        "      - {name: r, model: {kind: deployment, app: ranking, deployment: RankerV2}}\n"
        "    policy: {kind: fixed}\n    reward: {kind: bernoulli}\n"
    )
    arms = load_config(tmp_path / "cfg.yaml").experiments[0].arms
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("RAY_ADDRESS", address)
    ((arm, line),) = _unloadable(arms)
    assert arm == "r" and line.startswith(
        f"cannot look for Serve deployment ranking/RankerV2: no Ray cluster answers at {address}"
    )
    monkeypatch.delenv("RAY_ADDRESS")
    assert _unloadable(arms) == [
        (
            "r",
            "cannot look for Serve deployment ranking/RankerV2: no Ray cluster to look in "
            "(set RAY_ADDRESS to its HOST:PORT)",
        )
    ]


def test_the_readmes_model_kinds_example_validates() -> None:
    import re

    import yaml

    from bandit_serve.config import MODEL_REF

    text = (ROOT / "README.md").read_text()
    block = text[text.index("### Model kinds") :]
    example = re.search(r"```yaml\n(.*?)```", block, re.S)
    assert example is not None
    arms = yaml.safe_load(example.group(1))["arms"]
    kinds = [MODEL_REF.validate_python(a["model"]).kind for a in arms]
    assert kinds == ["sklearn", "callable", "onnx", "deployment", "http", "http", "http"]
