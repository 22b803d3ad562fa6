"""What the Snakemake workflow catalog and reuse need: a license the package declares, the catalog's usage file, the
report's templates shipped with the package, and the README's screenshot of the report."""

from __future__ import annotations

import fnmatch
import re
import tomllib

import yaml


def test_the_license_file_is_the_one_pyproject_declares(repo_root):
    project = tomllib.loads((repo_root / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (repo_root / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in text


def test_the_catalog_file_names_the_usage_and_configuration(repo_root):
    usage = yaml.safe_load((repo_root / ".snakemake-workflow-catalog.yml").read_text())["usage"]
    flags = usage["mandatory-flags"]["flags"].split()
    assert flags[0] == "--configfile" and all((repo_root / f).is_file() for f in flags[1:])
    named = set(re.findall(r"config/[\w.-]+\.yaml", usage["mandatory-flags"]["desc"]))
    assert named == {p.relative_to(repo_root).as_posix() for p in (repo_root / "config").glob("*.yaml")}
    assert any(usage["software-stack-deployment"].values()) and usage["report"] is True
    # the catalog reads workflow/Snakefile whenever a workflow/ folder exists (a root Snakefile is then not looked
    # for), rule modules ending in .smk in workflow/rules, and config/README.md
    assert (repo_root / "workflow/Snakefile").is_file() and (repo_root / "config/README.md").is_file()
    assert not (repo_root / "Snakefile").exists(), "Snakemake would run a root Snakefile before workflow/Snakefile"
    assert all(p.suffix == ".smk" for p in (repo_root / "workflow/rules").iterdir())


def test_the_report_templates_ship_with_the_package(repo_root):
    patterns = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = repo_root / "src/spatialreasoner"
    templates = [p.relative_to(package).as_posix() for p in (package / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, pat) for pat in patterns["spatialreasoner"]) for t in templates)


def test_the_readme_shows_the_reports_first_screen(repo_root):
    readme = (repo_root / "README.md").read_text()
    shots = re.findall(r"!\[[^\]]*\]\((docs/[^)]+\.png)\)", readme)
    assert "docs/report-first-screen.png" in shots
    png = (repo_root / "docs/report-first-screen.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
