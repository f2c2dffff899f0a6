"""The README, config.example.json and the module docstring describe the code as it is."""

import json
import os
import re

import gemini_proxy as gp
from conftest import make_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(name):
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        return f.read()


def test_readme_documents_every_setting_with_its_environment_variable_and_flag():
    readme = read("README.md")
    missing = [s.key for s in gp.SETTINGS if "`%s`" % s.key not in readme]
    missing += [k for k in gp.TOP_LEVEL_KEYS if "`%s`" % k not in readme]
    assert missing == []
    for setting in gp.SETTINGS:
        if setting.env:   # the README's table row names both, in the same row
            row = re.search(r"^\| `%s`[^\n]*" % re.escape(setting.env), readme, re.M)
            assert row and "`%s`" % setting.flag in row.group(), setting.env
    assert "`GEMINI_PROXY_CONFIG`" in readme


def test_help_lists_every_flag_the_settings_declare():
    text = " ".join(gp.build_arg_parser().format_help().split())
    # -c beats $GEMINI_PROXY_CONFIG, which beats ./config.json (load_config's order)
    assert "(default: $GEMINI_PROXY_CONFIG, else ./config.json when it exists)" in text
    assert re.search(r"--log-level \{[a-z,]+\} log level; sets logging.level", text)
    for setting in gp.SETTINGS:
        if setting.flag:
            assert setting.flag in text and setting.env in text


def test_readme_defaults_match_the_code():
    readme = read("README.md")
    for setting in gp.SETTINGS:
        if setting.section not in ("server", "upstream", "logging"):
            continue
        key, default = setting.key, setting.default
        row = re.search(r"^\| `%s` \|([^|]*)\|" % re.escape(key), readme, re.M)
        assert row, key
        shown = row.group(1).strip().strip("`")
        if isinstance(default, bool):
            expected = "true" if default else "false"
        elif isinstance(default, (list, dict)):
            expected = json.dumps(default)
        elif default == "" or key == "log_dir":
            continue
        else:
            expected = str(default)
        assert shown == expected, (key, shown, expected)


def test_readme_has_the_two_setup_commands():
    readme = read("README.md")
    block = readme.split("## Set-up: two commands", 1)[1].split("```", 2)[1]
    commands = [line for line in block.splitlines()[1:] if line.strip()]
    assert len(commands) == 2
    assert commands[0].startswith("python3 gemini_proxy.py")
    assert "python3 -m pytest -q tests" in commands[1]
    assert "python3 -m pytest -q tests" in read(".ci/run")


def test_config_example_loads_and_routes():
    import json
    raw = json.loads(read("config.example.json"))
    config = make_config(raw, {"MOONSHOT_API_KEY": "sk-moon", "GEMINI_API_KEY": "g",
                               "ANTHROPIC_API_KEY": "a", "DEEPSEEK_API_KEY": "d",
                               "OPENAI_API_KEY": "o"})
    assert config.disabled == {}
    assert gp.resolve_route(config, "gemini-2.5-pro")[1] == "kimi-k2-0905-preview"
    assert gp.resolve_route(config, "gemini-3-flash-preview")[0].upstream == "deepseek"
    assert gp.resolve_route(config, "claude-opus-5-5")[0].upstream == "claude"
    assert gp.resolve_route(config, "gpt-4o")[1] == "gemini-2.5-flash"
    assert gp.resolve_route(config, "gpt-5.5")[0].upstream == "openai"
    assert config.upstreams["openai"]["kind"] == "openai-responses"
    assert gp.resolve_route(config, "anything")[0].upstream == "kimi"
    assert gp.route_candidates(config, "gemini-2.5-pro")[1] == ("deepseek", "deepseek-chat")
    assert config.upstreams["gemini"]["base_url"] == "https://generativelanguage.googleapis.com"


def test_docstring_contents_match_the_section_banners():
    source = read("gemini_proxy.py")
    banners = re.findall(r"^# ---- (\d+)\. (.+?) -+$", source, re.M)
    assert [int(n) for n, _ in banners] == list(range(len(banners)))
    contents = gp.__doc__.split("Contents", 1)[1]
    listed = re.findall(r"^\s+(\d+)\. (.+)$", contents, re.M)
    assert [n for n, _ in listed] == [n for n, _ in banners]
    for (_, listed_title), (_, banner_title) in zip(listed, banners):
        assert listed_title.split(" (")[0].lower().startswith(
            banner_title.split(" (")[0].lower()), (listed_title, banner_title)


def test_only_the_standard_library_is_imported():
    import ast
    import sys
    names = getattr(sys, "stdlib_module_names", None)
    if names is None:   # Python < 3.10 has no list; the 3.10+ run checks it
        return
    tree = ast.parse(read("gemini_proxy.py"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert sorted(imported - set(names) - {"__future__"}) == []


def test_config_example_starts_with_no_keys_at_all_and_names_every_missing_one():
    import json
    config = make_config(json.loads(read("config.example.json")), {})
    assert sorted(config.disabled) == ["claude", "deepseek", "gemini", "kimi", "openai"]
    assert all("environment variable" in why for why in config.disabled.values())
    assert "local" not in config.disabled     # the keyless local model still works
