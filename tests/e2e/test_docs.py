"""Every ```bash and ```python block of the user guide (and the README) runs against the demo stack.

Blocks run as written, in a fresh temporary folder that holds `speech.wav`, with OPENAI_BASE_URL
and OPENAI_API_KEY pointing at the stack. A block right after
`<!-- docs-test: skip (why) -->` is reported as skipped with that reason.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import REPO, DemoStack

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.*?)\)\s*-->\s*$")
LANGUAGES = ("bash", "python")


@dataclass(frozen=True)
class Block:
    """One runnable code block of a document."""

    doc: str
    line: int
    language: str
    code: str
    skip: str | None

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}:{self.language}"


def blocks(path: Path) -> list[Block]:
    """The bash and python blocks of PATH, each with the skip reason written just above it."""
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match.group(1) not in LANGUAGES:
            continue
        before = text[:match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        skip = SKIP.search(before)
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(path.name, line, match.group(1), match.group(2), skip.group(1) if skip else None))
    return found


USER_GUIDE = blocks(REPO / "docs" / "user-guide.md")
README = blocks(REPO / "README.md")


def run_block(block: Block, cwd: Path, env: dict[str, str]) -> str:
    """Run BLOCK as a script; returns its stdout, failing the test on a non-zero exit."""
    command = ["bash", "-e", "-o", "pipefail", "-s"] if block.language == "bash" else [sys.executable, "-"]
    done = subprocess.run(command, input=block.code, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, f"{block.id} exited {done.returncode}:\n{block.code}\n{done.stderr[-2000:]}"
    return done.stdout


def check_output(block: Block, output: str) -> None:
    """Something was printed, and printed JSON is a document without an error in it."""
    assert output.strip(), f"{block.id} printed nothing:\n{block.code}"
    if output.lstrip()[:1] in "{[":
        data = json.loads(output)
        assert not (isinstance(data, dict) and "error" in data), f"{block.id}: {output[:500]}"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A fresh folder with the speech clip the transcription examples upload."""
    subprocess.run(["espeak-ng", "-w", str(tmp_path / "speech.wav"), "The quick brown fox jumps over the lazy dog."],
                   check=True, capture_output=True)
    return tmp_path


@pytest.mark.parametrize("block", USER_GUIDE, ids=[b.id for b in USER_GUIDE])
def test_user_guide_example(block: Block, demo_stack: DemoStack, workdir: Path) -> None:
    if block.skip:
        pytest.skip(block.skip)
    env = {**os.environ, "OPENAI_BASE_URL": demo_stack.base_url, "OPENAI_API_KEY": demo_stack.key}
    check_output(block, run_block(block, workdir, env))


@pytest.mark.parametrize("block", README, ids=[b.id for b in README])
def test_readme_example(block: Block, workdir: Path) -> None:
    """README commands run as an admin would, on a registry and settings of their own."""
    if block.skip:
        pytest.skip(block.skip)
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_LAUNCH_")}
    env.update(PATH=f"{venv_bin}:{env.get('PATH', '')}", XDG_CONFIG_HOME=str(workdir),
               LLM_LAUNCH_DB=str(workdir / "registry.db"), SECRET=secrets.token_urlsafe(16))
    check_output(block, run_block(block, workdir, env))


def test_every_user_guide_block_is_collected() -> None:
    """The fence parser sees every block (a typo in a fence would hide an example from this test)."""
    text = (REPO / "docs" / "user-guide.md").read_text()
    fences = text.count("\n```") // 2
    configs = len(re.findall(r"^```toml\n", text, re.MULTILINE))  # files to write, not to run
    assert len(USER_GUIDE) + configs == fences and len(USER_GUIDE) >= 8
