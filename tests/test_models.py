"""Model references: a joblib-saved scikit-learn estimator and importable callables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
