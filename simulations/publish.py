"""Run every scenario of this folder and write simulations/README.md with the results.

Run from the project root: ``python simulations/publish.py [--out DIR]``. Each section
gives the command that reproduces its table (regret figures are deterministic for the
seed; decisions per second depend on the machine and its load).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bandit_serve.simulation.report import markdown_table  # noqa: E402
from bandit_serve.simulation.scenario import load_scenario  # noqa: E402

NOTES = {
    "bernoulli-easy": "Well-separated means (0.1, 0.2, 0.3).",
    "bernoulli-hard": "Five arms within two points of each other (0.49 to 0.51).",
    "gaussian": "Real-valued rewards with noise larger than the gaps.",
    "delayed-exponential": "Rewards arrive after an exponential delay of 500 decisions on average.",
    "delayed-missing": "Exponential delay (mean 200) and 20% of rewards never arrive.",
    "stale": "Replicas see fresh statistics only every 100 decisions.",
    "drift": "The best arm becomes the worst half way through.",
    "many-arms": "K = 50 arms.",
    "ab-vs-thompson": "A fixed 50/50 A/B test to a fixed sample size against Thompson sampling.",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("var/simulations"))
    args = ap.parse_args()
    parts = [
        "# Published simulation results",
        "",
        "Produced by `python simulations/publish.py` on "
        f"{platform.machine()} with {platform.python_implementation()} "
        f"{platform.python_version()}; regret is in expected-reward units at the horizon "
        "(± one standard error over the runs). The Lai-Robbins column divides by the "
        "asymptotic lower bound `C ln T` of stationary Bernoulli instances; below 1 is "
        "possible at finite T because the bound is asymptotic.",
        "",
    ]
    for path in sorted(HERE.glob("*.yaml")):
        sc = load_scenario(path)
        out = args.out / sc.name
        cmd = ["bandit-serve", "simulate", f"simulations/{path.name}", "--out", str(out)]
        subprocess.run(
            [sys.executable, "-m", "bandit_serve.cli", *cmd[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        data = json.loads((out / "summary.json").read_text())
        bound = data["lai_robbins"]
        parts += [
            f"## {sc.name}",
            "",
            NOTES.get(sc.name, ""),
            f"{sc.runs} runs x {sc.horizon:,} decisions, seed {sc.seed}"
            + (f"; Lai-Robbins bound at T: {bound:.1f}." if bound else "."),
            "",
            f"    {' '.join(cmd)}",
            "",
            markdown_table(data),
            "",
        ]
    (HERE / "README.md").write_text("\n".join(parts))
    print(f"wrote {HERE / 'README.md'}")


if __name__ == "__main__":
    main()
