"""The documentation says what the code does: docs/configuration.md is generated from the CLI's
definitions, and its TOML example is a file `--config` accepts."""

from __future__ import annotations

import re
from pathlib import Path

from asyncsgd.cli import settings_markdown
from asyncsgd.config import FIELD_NAMES, RunConfig, load_toml
from asyncsgd.settings import check_options, resolve

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_configuration_md_is_generated_from_the_cli():
    assert (DOCS / "configuration.md").read_text() == settings_markdown(), \
        "regenerate docs/configuration.md with the command at its top"


def test_configuration_md_documents_every_setting():
    text = (DOCS / "configuration.md").read_text()
    assert [name for name in FIELD_NAMES if f"`{name}`" not in text] == []


def test_the_toml_example_is_accepted(tmp_path):
    text = (DOCS / "configuration.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    (tmp_path / "run.toml").write_text(example)
    values = load_toml(str(tmp_path / "run.toml"))
    check_options(values["algorithm"], values)
    cfg = resolve(RunConfig(**values))
    assert cfg.algorithm == "dasgd" and cfg.parsed.delay.latency_s == 0.02 and cfg.lr_steps == (0.5, 0.75)
