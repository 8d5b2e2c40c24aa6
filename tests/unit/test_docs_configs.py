"""Every configuration the docs show is one the software accepts: each plugin `config:` in a YAML block of the README,
docs/kong.md and examples/kong/ validated against that plugin's dumped schema (what Kong's Admin API and decK check)
by the independent Kong-schema validator of the tests; the kong.conf block's commands parsed by the real command;
the README's Python blocks run (those that need no outside service) or compiled."""

from __future__ import annotations

import functools
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

yaml = pytest.importorskip("yaml")
pytest.importorskip("kong_pdk")

from support.kong_schema import kong_validate  # noqa: E402

from fastguard.kong.plugins import PLUGINS  # noqa: E402
from fastguard.kong.server import FastguardPluginServer  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", ROOT / "docs" / "kong.md"]


@functools.cache
def dump(name: str) -> dict:
    return FastguardPluginServer(name).get_plugin_info(name)["Schema"]


def _blocks(path: pathlib.Path, lang: str) -> list[tuple[int, str, str]]:
    """(line, the section heading above it, text) of each fenced block of `lang`."""
    out, heading = [], ""
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if lines[i].strip() == f"```{lang}":
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            out.append((i + 1, heading, "\n".join(lines[i + 1:j])))
            i = j
        i += 1
    return out


def _plugin_configs(doc, section: str):
    """(plugin name, config) of every plugin entry in a parsed YAML document; a bare `config:` block belongs to the
    plugin its section is about."""
    if isinstance(doc, dict):
        if doc.get("name") in PLUGINS and isinstance(doc.get("config"), dict):
            yield doc["name"], doc["config"]
        elif set(doc) == {"config"} and section in PLUGINS:
            yield section, doc["config"]
        for value in doc.values():
            yield from _plugin_configs(value, section)
    elif isinstance(doc, list):
        for value in doc:
            yield from _plugin_configs(value, section)


def _all_configs():
    found = []
    for path in DOCS:
        for line, heading, text in _blocks(path, "yaml"):
            for name, config in _plugin_configs(yaml.safe_load(text), heading):
                found.append(pytest.param(name, config, id=f"{path.name}:{line}:{name}"))
    for path in sorted((ROOT / "examples" / "kong").glob("*.yaml")):
        for name, config in _plugin_configs(yaml.safe_load(path.read_text()), ""):
            found.append(pytest.param(name, config, id=f"{path.name}:{name}"))
    return found


CONFIGS = _all_configs()


def test_the_docs_show_plugin_configs():
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize("name, config", CONFIGS)
def test_every_documented_plugin_config_is_one_kong_accepts(name, config):
    kong_validate(dump(name), config)


def test_the_kong_conf_commands_are_ones_the_command_accepts(tmp_path):
    """Each start_cmd and query_cmd of docs/kong.md's kong.conf block: its arguments parse (the query commands run)."""
    conf = next(text for _, heading, text in _blocks(ROOT / "docs" / "kong.md", "") if "pluginserver_names" in text)
    commands = re.findall(r"^pluginserver_\w+_(start|query)_cmd = (.+)$", conf, re.M)
    assert len(commands) == 6
    for kind, command in commands:
        argv = shlex.split(command)
        assert argv[0].endswith("/bin/fastguard") and argv[1] == "kong-server"
        if kind == "query":
            run = subprocess.run([sys.executable, "-m", "fastguard.cli", *argv[1:]], capture_output=True, text=True,
                                 timeout=60)
            assert run.returncode == 0 and '"Schema"' in run.stdout, run.stderr
        else:
            socket = argv[argv.index("--socket") + 1]
            assert socket == re.search(rf"^pluginserver_(\w+)_socket = ({re.escape(socket)})$", conf, re.M).group(2)


@pytest.mark.parametrize("index", range(4))
def test_the_readme_python_blocks_run_or_compile(index, redis_server):
    """Blocks 1 and 2 run (the second on a real Redis: the test's own, in place of the README's address); the
    metrics and JWT blocks name objects the reader has (a limiter, a verifier, a token): they must compile."""
    blocks = _blocks(ROOT / "README.md", "python")
    assert len(blocks) == 4
    _, _, code = blocks[index]
    compiled = compile(code, f"README.md python block {index + 1}", "exec")
    if index == 0:
        exec(compiled, {})
    elif index == 1:
        code = code.replace("redis://127.0.0.1:6379/0", f"redis://127.0.0.1:{redis_server.port}/0")
        exec(compile(code, "README.md python block 2", "exec"), {})
