"""The documentation's examples run as written: every ```sh block that README.md
or a page of docs/ marks with `<!-- example: runs as written ... -->` runs with
bash in an empty folder, with the installed jobctl on PATH. A `jobctl progress`
line's `# comment` is what it prints. And every page of docs/ is linked from
the README, every link in them leads somewhere."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import JOBCTL, ROOT, run

pytestmark = pytest.mark.slow  # bash and the console script, as a reader runs them

MARK = re.compile(r"<!-- example: runs as written[^>]*-->\n```sh\n(.*?)```", re.S)
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def examples() -> list[tuple[str, int, str]]:
    out = []
    for page in PAGES:
        for k, block in enumerate(MARK.findall(page.read_text())):
            out.append((page.relative_to(ROOT).as_posix(), k, block))
    return out


def test_the_tour_and_a_docs_page_have_runnable_examples():
    pages = {page for page, _, _ in examples()}
    assert "README.md" in pages and any(p.startswith("docs/") for p in pages), pages


@pytest.mark.parametrize("page,k,block", examples(), ids=lambda x: str(x)[:20])
def test_an_example_runs_as_written(page, k, block, tmp_path):
    script, expected = ["set -eo pipefail"], []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        if command.strip().startswith("jobctl progress"):
            script.append(f"{command.strip()} >> progress.txt")
            expected.append(comment.strip())
        else:
            script.append(command.rstrip())
    env = {
        **os.environ,
        "PATH": f"{Path(JOBCTL).parent}:{os.environ['PATH']}",
        "JOBCTL_DB": str(tmp_path / "jobs.db"),
        "GITHUB_SHA": "0123abc",  # what a CI runner sets, for the examples that name it
    }
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert result.returncode == 0, f"{page} example {k}: {result.stderr}"
    got = (tmp_path / "progress.txt").read_text().splitlines() if expected else []
    assert got == expected
    assert run("verify", db=tmp_path / "jobs.db").returncode == 0


def test_every_docs_page_is_linked_from_the_readme_and_every_link_leads_somewhere():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links {target}, which is not there"
