"""Foundation: pyproject.toml and environment.yml list the same packages; README commands match CI."""

import re

import tomllib
from conftest import REPO


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_lists_the_same_packages_as_pyproject():
    import yaml

    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in py["dependencies"]}
    for extra in ("book", "test", "lmdb"):
        wanted |= {_name(r) for r in py["optional-dependencies"][extra]}
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {_name(r) for r in pip if not r.startswith("-e")}
    assert listed == wanted
    assert "-e .[book,test,lmdb]" in pip


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- test-command -->\s*```\n(.+?)\n```", readme, re.S)
    assert block and "pytest" in block.group(1)
    ci = (REPO / ".ci" / "run").read_text()
    assert "test-command" in ci and 'bash -c "$cmd"' in ci


def test_ci_lints_with_the_readme_lint_command_before_the_tests():
    """ruff check and ruff format --check run before the tests, with the ruff version the dev extra pins."""
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- lint-command -->\s*```\n(.+?)\n```", readme, re.S)
    assert block and "ruff check" in block.group(1) and "ruff format --check" in block.group(1)
    ci = (REPO / ".ci" / "run").read_text()
    assert "lint-command" in ci and ci.index('bash -c "$lint"') < ci.index('bash -c "$cmd"')
    dev = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    assert any(re.fullmatch(r"ruff==[\d.]+", d) for d in dev)


def test_console_script_is_declared():
    py = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert py["scripts"]["piad"] == "piad.cli:main"


def test_one_install_line_everywhere():
    """README's commands, the book's landing page and its Reproduce page install with the same line, and all three
    document the CPU-only alternative (torch's CPU wheels first, then the package)."""
    readme = (REPO / "README.md").read_text()
    blocks = [
        re.search(rf"<!-- {name} -->\s*```\n(.+?)\n```", readme, re.S).group(1)
        for name in ("main-command", "test-command")
    ]
    installs = {re.search(r"pip install (.+?) &&", b).group(1) for b in blocks}
    assert len(installs) == 1, installs
    line = "pip install " + installs.pop()
    cpu = re.compile(
        r"pip install torch==\S+ torchvision==\S+ --index-url https://download\.pytorch\.org/whl/cpu\n"
        r"(?:\S*/)?pip install -e \"\.\[book,test,lmdb\]\""
    )
    for page in ("README.md", "book/intro.md", "book/reproduce.md"):
        text = (REPO / page).read_text()
        assert line in text, f"{page} should install with: {line}"
        found = [m for m in re.findall(r"pip install [^\n`]*", text) if "--index-url" not in m]
        assert all(m.startswith(line) or m == 'pip install -e ".[book,test,lmdb]"' for m in found), (page, found)
        assert cpu.search(text), f"{page} should document the CPU-only install"
        versions = re.search(r"pip install (torch==\S+ torchvision==\S+)", line).group(1)
        assert f"pip install {versions} --index-url" in text, f"{page}: the CPU wheels must pin {versions}"
