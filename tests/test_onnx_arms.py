"""ONNX arms on onnxruntime: scikit-learn models converted with skl2onnx here predict as
the estimator does, the input tensor gives the contract (a wrong shape is 422 through the
HTTP API with nothing logged, on a real Redis), batches are one session call, and a file
that does not load is one line of ``bandit-serve check``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression, LogisticRegression
from typer.testing import CliRunner

from bandit_serve.cli import app as cli
from bandit_serve.config import AppConfig, load_config
from bandit_serve.config.models import OnnxModel
from bandit_serve.models import InputContract, LoadedModel
from bandit_serve.models.onnx import OnnxArm
from bandit_serve.store import RedisStore
from tests.conftest import ManualClock, delete_experiment_keys
from tests.test_service_api import Harness


def data(
    n: int = 300, k: int = 4, seed: int = 0
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, k))
    y = (x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, -1] > 0).astype(np.int64)
    return x, y


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A logistic regression on 4 features and its ONNX export (float32 input, the label
    as first output, as skl2onnx makes it by default)."""
    x, y = data()
    est = LogisticRegression().fit(x.astype(np.float32), y)
    path = tmp_path_factory.mktemp("onnx") / "models" / "v3.onnx"
    path.parent.mkdir()
    path.write_bytes(to_onnx(est, x[:1].astype(np.float32)).SerializeToString())
    return est, path


def test_the_onnx_arm_predicts_as_the_estimator_does(
    classifier: tuple[Any, Path], tmp_path: Path
) -> None:
    est, path = classifier
    cfg = path.parent.parent / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": "e",
                        "arms": [
                            {"name": "v3", "model": {"kind": "onnx", "path": "models/v3.onnx"}},
                            {"name": "short", "model": "models/v3.onnx"},
                        ],
                        "policy": {"kind": "fixed"},
                        "reward": {"kind": "bernoulli"},
                    }
                ]
            }
        )
    )
    arms = load_config(cfg).experiments[0].arms
    assert [a.model for a in arms] == [
        OnnxModel(kind="onnx", path=str(path), providers=["CPUExecutionProvider"])
    ] * 2  # relative to the config file, as scikit-learn's; the .onnx shorthand
    model = LoadedModel(arms[0].model)
    assert model.contract() == InputContract(shape=(4,), dtype="float32")
    x, _ = data(50, seed=1)
    rows = x.astype(np.float32)
    want = est.predict(rows).tolist()
    assert [model.predict(r.tolist()) for r in rows] == want  # one row: the label
    assert model.predict(rows.tolist()) == want  # a list of rows: the labels
    assert model.predict_many([r.tolist() for r in rows]) == want
    # a float64 regressor: the input is tensor(double), the output one value per row
    xr, _ = data(100, k=3, seed=2)
    reg = LinearRegression().fit(xr, xr @ [1.0, -2.0, 0.5])
    reg_path = tmp_path / "reg.onnx"
    reg_path.write_bytes(to_onnx(reg, xr[:1]).SerializeToString())
    reg_model = LoadedModel(OnnxModel(kind="onnx", path=str(reg_path)))
    assert reg_model.contract() == InputContract(3, dtype="float64")
    got = np.ravel(reg_model.predict(xr[:10].tolist()))
    np.testing.assert_allclose(got, reg.predict(xr[:10]), rtol=1e-9)


class CountingSession:
    """An onnxruntime session that counts its runs and the rows each got."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.rows: list[int] = []

    def run(self, outputs: Any, feeds: dict[str, Any]) -> Any:
        (x,) = feeds.values()
        self.rows.append(len(x))
        return self.session.run(outputs, feeds)


async def test_a_batch_of_requests_is_one_session_call(classifier: tuple[Any, Path]) -> None:
    est, path = classifier
    arm = OnnxArm(OnnxModel(kind="onnx", path=str(path)))
    counting = CountingSession(arm.session)
    arm.session = counting
    x, _ = data(8, seed=3)
    rows = x.astype(np.float32).tolist()
    batch: list[Any] = [rows[0], rows[1:4], rows[4], [rows[5]], rows[6], rows[7]]
    out = await arm.apredict_many(batch)
    assert counting.rows == [8]  # 8 rows of 6 requests, one call
    labels = est.predict(np.asarray(rows, dtype=np.float32)).tolist()
    assert out == [labels[0], labels[1:4], labels[4], [labels[5]], labels[6], labels[7]]


async def test_a_wrong_shape_is_422_through_the_api_with_nothing_logged(
    classifier: tuple[Any, Path], redis_url: str, exp_name: str, clock: ManualClock
) -> None:
    est, path = classifier
    cfg = AppConfig.model_validate(
        {
            "experiments": [
                {
                    "name": exp_name,
                    "arms": [
                        {"name": "echo", "model": "tests.fixtures.models:echo_a"},
                        {"name": "v3", "model": {"kind": "onnx", "path": str(path)}},
                    ],
                    "policy": {"kind": "fixed"},
                    "reward": {"kind": "bernoulli", "wait_seconds": 60},
                    "sync_interval_seconds": 0.01,
                }
            ]
        }
    )
    h = Harness(cfg, RedisStore.from_url(redis_url, clock=clock))
    h.service.router(exp_name).model_timeout = 10.0  # a busy machine is no model error
    try:
        before = await h.counted(exp_name)
        bad_inputs: list[Any] = [
            [1.0, 2.0, 3.0],  # 3 features, not 4
            [[1, 2, 3, 4], [1, 2]],
            [[[1, 2, 3, 4]]],
            ["a", "b", "c", "d"],
            [1, 2, 3, True],
            [1e39, 0, 0, 0],  # beyond float32
            "x" * 12,
        ]
        for bad in bad_inputs:
            r = await h.predict(exp_name, bad)
            assert r.status_code == 422, (bad, r.text)
            assert "the contract of arm 'v3'" in r.json()["detail"]
            assert "xxxxxxxxxxxx" not in r.text
        assert "one row of 4 numbers" in r.json()["detail"]
        assert await h.counted(exp_name) == before  # nothing logged, whichever arm
        served = Counter[str]()
        x, _ = data(30, seed=4)
        for row in x.astype(np.float32).tolist():
            r = await h.predict(exp_name, row)
            assert r.status_code == 200, r.text
            body = r.json()
            served[body["arm"]] += 1
            if body["arm"] == "v3":
                assert body["prediction"] == est.predict(np.asarray([row], np.float32))[0]
        assert set(served) == {"echo", "v3"}
    finally:
        await h.close()
        delete_experiment_keys(redis_url, exp_name)


def test_an_onnx_file_that_does_not_load_is_one_line_of_check(
    classifier: tuple[Any, Path], tmp_path: Path
) -> None:
    _, path = classifier
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    arms = [
        {"name": "good", "model": {"kind": "onnx", "path": str(path)}},
        {"name": "junk", "model": "junk.onnx"},
        {"name": "gone", "model": "missing.onnx"},
        {
            "name": "gpu",
            "model": {"kind": "onnx", "path": str(path), "providers": ["CUDAExecutionProvider"]},
        },
    ]
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "experiments": [
                    {
                        "name": "e",
                        "arms": arms,
                        "policy": {"kind": "fixed"},
                        "reward": {"kind": "bernoulli"},
                    }
                ]
            }
        )
    )
    r = CliRunner().invoke(cli, ["check", str(cfg)])
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert r.exit_code == 2, r.output
    assert [e.split(":")[1].strip() for e in errors] == ["e/junk", "e/gone", "e/gpu"]
    assert f"cannot load ONNX file {tmp_path / 'junk.onnx'}: InvalidProtobuf" in errors[0]
    assert "missing.onnx does not exist" in errors[1]
    assert "none of the providers CUDAExecutionProvider is available" in errors[2]
