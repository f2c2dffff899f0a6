"""Configuration (section 4): load_config and resolve_route.

Every call passes an explicit environment dict and runs in an empty temporary directory,
so neither the machine's environment nor a stray ./config.json can leak in.
"""

import json

import pytest

from conftest import gp, make_config

MOONSHOT = "https://api.moonshot.cn/v1"

# The seed project's README example, as published, except for one trailing comma after
# the last model_mapping entry (see test_seed_readme_text_with_trailing_comma_loads).
SEED_README_EXAMPLE = """{
  "openai_api_key": "sk-your-kimi-api-key",
  "openai_base_url": "https://api.moonshot.cn/v1",
  "model_mapping": {
    "gemini-2.5-pro": "kimi-k2-0711-preview",
    "gemini-2.5-flash": "moonshot-v1-auto"
  },
  "default_openai_model": "kimi-k2-0711-preview",
  "server": {
    "host": "0.0.0.0",
    "port": 8000,
    "log_level": "info"
  },
  "logging": {
    "enable_detailed_logs": true,
    "enable_access_logs": true,
    "log_directory": "logs"
  }
}
"""

# The seed's own config.json: the same flat format plus its retry section.
SEED_CONFIG_JSON = {
    "openai_api_key": "sk-1234",
    "openai_base_url": "https://api.moonshot.cn/v1",
    "model_mapping": {"gemini-2.5-pro": "kimi-k2-0711-preview",
                      "gemini-2.5-flash": "moonshot-v1-auto"},
    "default_openai_model": "kimi-k2-0711-preview",
    "server": {"host": "127.0.0.1", "port": 8000, "log_level": "warning"},
    "logging": {"enable_detailed_logs": False, "enable_access_logs": False,
                "log_directory": "seed-logs"},
    "retry": {"max_retries": 3, "wait_fixed": 2},
}


@pytest.fixture(autouse=True)
def empty_cwd(tmp_path, monkeypatch):
    """No ./config.json unless a test writes one."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def load(raw=None, argv=(), environ=None, tmp_path=None):
    """load_config with flags parsed by the real argument parser. raw=None: no file."""
    args = list(argv)
    if raw is not None:
        path = "test-config.json"
        with open(path, "w", encoding="utf-8") as f:
            f.write(raw if isinstance(raw, str) else json.dumps(raw))
        args = ["-c", path] + args
    return gp.load_config(gp.build_arg_parser().parse_args(args), dict(environ or {}))


def config_error(raw=None, argv=(), environ=None):
    with pytest.raises(gp.ConfigError) as info:
        load(raw, argv, environ)
    return str(info.value)


def kimi(**extra):
    spec = {"kind": "openai", "base_url": MOONSHOT, "api_key": "sk-kimi-0123456789"}
    spec.update(extra)
    return spec


def route_of(config, model):
    route, upstream_model = gp.resolve_route(config, model)
    return route.upstream, upstream_model


# ---- defaults ----------------------------------------------------------------------

def test_defaults_with_only_an_echo_upstream():
    config = load(argv=["--upstream-kind", "echo"])
    assert config.server["host"] == "127.0.0.1"
    assert config.server["port"] == 8000
    assert config.server["api_keys"] == []
    assert config.server["allow_public"] is False
    assert config.logging["level"] == "info"
    assert list(config.upstreams) == ["default"]
    assert config.upstreams["default"]["kind"] == "echo"
    assert config.default_upstream == "default"
    assert [(r.pattern, r.upstream, r.upstream_model) for r in config.routes] == \
        [("*", "default", "")]
    assert config.source == ""


def test_make_config_helper_reads_a_file():
    config = make_config({"upstreams": {"kimi": kimi()}, "server": {"port": 9123}})
    assert config.server["port"] == 9123
    assert config.upstreams["kimi"]["base_url"] == MOONSHOT
    assert config.source.endswith(".json")


# ---- where the file comes from -------------------------------------------------------

def test_config_file_from_flag_records_its_source():
    config = load({"upstreams": {"kimi": kimi()}})
    assert config.source == "test-config.json"
    assert "kimi" in config.upstreams


def test_config_file_from_environment_variable(tmp_path):
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({"upstreams": {"kimi": kimi()}, "server": {"port": 9001}}))
    config = load(environ={"GEMINI_PROXY_CONFIG": str(path)})
    assert config.source == str(path)
    assert config.server["port"] == 9001


def test_config_json_in_current_directory_is_used(empty_cwd):
    (empty_cwd / "config.json").write_text(json.dumps({"upstreams": {"kimi": kimi()},
                                                       "server": {"port": 9002}}))
    config = load()
    assert config.source == "config.json"
    assert config.server["port"] == 9002
    assert list(config.upstreams) == ["kimi"]


def test_config_flag_beats_environment_variable(tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"upstreams": {"other": kimi()}, "server": {"port": 9003}}))
    config = load({"upstreams": {"kimi": kimi()}, "server": {"port": 9004}},
                  environ={"GEMINI_PROXY_CONFIG": str(other)})
    assert config.server["port"] == 9004
    assert list(config.upstreams) == ["kimi"]


def test_config_environment_variable_beats_config_json(empty_cwd, tmp_path):
    (empty_cwd / "config.json").write_text(json.dumps({"upstreams": {"cwd": kimi()}}))
    chosen = tmp_path / "chosen.json"
    chosen.write_text(json.dumps({"upstreams": {"chosen": kimi()}}))
    config = load(environ={"GEMINI_PROXY_CONFIG": str(chosen)})
    assert list(config.upstreams) == ["chosen"]


def test_missing_config_file_names_the_path():
    message = config_error(argv=["-c", "no-such-file.json"])
    assert "no-such-file.json" in message
    assert "cannot read" in message


def test_invalid_json_names_the_file_line_and_column():
    message = config_error('{"server": {\n  "port": 8000\n  "host": "127.0.0.1"}}')
    assert "test-config.json line 3 column 3 is not valid JSON" in message
    assert "delimiter" in message


def test_comments_and_trailing_commas_are_allowed():
    config = load("""// written by hand
{
  /* a block comment
     over lines */
  "server": {"port": 8123, "host": "127.0.0.1",},   // trailing comma
  "upstreams": {"kimi": {"kind": "openai", "base_url": "https://a.example//v1",
                         "api_key": "k/*not a comment*/k",},},
}
""")
    assert config.server["port"] == 8123
    assert config.upstreams["kimi"]["base_url"] == "https://a.example//v1"   # in a string
    assert config.upstreams["kimi"]["api_key"] == "k/*not a comment*/k"


def test_error_after_a_comment_points_into_the_file_as_written():
    message = config_error('{\n  // a comment, then a mistake\n  "server": {"port": 80 80}\n}')
    assert "line 3 column 25" in message


def test_a_comma_inside_a_string_before_a_brace_is_kept():
    config = load({"upstreams": {"kimi": kimi(api_key="ends with ,}")}})
    assert config.upstreams["kimi"]["api_key"] == "ends with ,}"


def test_top_level_must_be_an_object():
    message = config_error("[1, 2]")
    assert "test-config.json" in message
    assert "JSON object" in message


# ---- precedence: file < environment < flags --------------------------------------------

def test_port_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "server": {"port": 9000}}
    assert load(raw).server["port"] == 9000
    assert load(raw, environ={"GEMINI_PROXY_PORT": "9001"}).server["port"] == 9001
    assert load(raw, ["--port", "9002"], {"GEMINI_PROXY_PORT": "9001"}).server["port"] == 9002


def test_host_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "server": {"host": "127.0.0.2"}}
    assert load(raw).server["host"] == "127.0.0.2"
    assert load(raw, environ={"GEMINI_PROXY_HOST": "localhost"}).server["host"] == "localhost"
    assert load(raw, ["--host", "::1"], {"GEMINI_PROXY_HOST": "localhost"}).server["host"] \
        == "::1"


def test_log_level_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "logging": {"level": "warning"}}
    assert load(raw).logging["level"] == "warning"
    env = {"GEMINI_PROXY_LOG_LEVEL": "error"}
    assert load(raw, environ=env).logging["level"] == "error"
    assert load(raw, ["--log-level", "debug"], env).logging["level"] == "debug"


def test_api_keys_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "server": {"api_keys": ["file-key"]}}
    assert load(raw).server["api_keys"] == ["file-key"]
    env = {"GEMINI_PROXY_API_KEYS": "env-key-1, env-key-2,"}
    assert load(raw, environ=env).server["api_keys"] == ["env-key-1", "env-key-2"]
    assert load(raw, ["--api-key", "flag-1", "--api-key", "flag-2"], env).server["api_keys"] \
        == ["flag-1", "flag-2"]


def test_workers_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "server": {"workers": 8}}
    assert load(raw).server["workers"] == 8
    assert load(raw, environ={"GEMINI_PROXY_WORKERS": "9"}).server["workers"] == 9
    assert load(raw, ["--workers", "10"], {"GEMINI_PROXY_WORKERS": "9"}).server["workers"] == 10


def test_log_dir_and_detailed_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "logging": {"log_dir": "from-file", "detailed": False}}
    config = load(raw)
    assert (config.logging["log_dir"], config.logging["detailed"]) == ("from-file", False)
    env = {"GEMINI_PROXY_LOG_DIR": "from-env", "GEMINI_PROXY_DETAILED_LOGS": "true"}
    config = load(raw, environ=env)
    assert (config.logging["log_dir"], config.logging["detailed"]) == ("from-env", True)
    config = load(raw, ["--log-dir", "from-flag"], env)
    assert config.logging["log_dir"] == "from-flag"


def test_detailed_logs_flag_turns_on_detailed_logging():
    raw = {"upstreams": {"kimi": kimi()}, "logging": {"detailed": False}}
    assert load(raw, ["--detailed-logs"]).logging["detailed"] is True


@pytest.mark.parametrize("text, expected", [("1", True), ("yes", True), ("TRUE", True),
                                            ("0", False), ("no", False), ("false", False)])
def test_boolean_environment_values(text, expected):
    raw = {"upstreams": {"kimi": kimi()}, "logging": {"detailed": not expected}}
    config = load(raw, environ={"GEMINI_PROXY_DETAILED_LOGS": text})
    assert config.logging["detailed"] is expected


def test_port_zero_flag_is_honoured():
    # --port 0 asks the OS for a free port; it must not fall back to the file or default.
    config = load({"upstreams": {"kimi": kimi()}, "server": {"port": 9000}}, ["--port", "0"])
    assert config.server["port"] == 0


def test_workers_zero_flag_is_rejected_not_ignored():
    message = config_error({"upstreams": {"kimi": kimi()}}, ["--workers", "0"])
    assert message.startswith("--workers: expected a whole number >= 1")


@pytest.mark.parametrize("key", ["workers", "stream_queue_chunks", "max_body_bytes",
                                 "max_head_bytes", "max_header_count"])
def test_settings_that_cannot_work_at_zero_are_refused(key):
    message = config_error({"upstreams": {"kimi": kimi()}, "server": {key: 0}})
    assert message.startswith("server.%s: expected a whole number >= 1" % key)


def test_upstream_url_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}}
    assert load(raw).upstreams["kimi"]["base_url"] == MOONSHOT
    env = {"GEMINI_PROXY_UPSTREAM_URL": "http://env.example/v1"}
    assert load(raw, environ=env).upstreams["kimi"]["base_url"] == "http://env.example/v1"
    config = load(raw, ["--upstream-url", "http://flag.example/v1"], env)
    assert config.upstreams["kimi"]["base_url"] == "http://flag.example/v1"
    assert list(config.upstreams) == ["kimi"]   # changed in place, not added beside


def test_upstream_key_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi(api_key="sk-file-key")}}
    assert load(raw).upstreams["kimi"]["api_key"] == "sk-file-key"
    env = {"GEMINI_PROXY_UPSTREAM_KEY": "sk-env-key"}
    assert load(raw, environ=env).upstreams["kimi"]["api_key"] == "sk-env-key"
    assert load(raw, ["--upstream-key", "sk-flag-key"], env).upstreams["kimi"]["api_key"] \
        == "sk-flag-key"


def test_upstream_kind_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}}
    assert load(raw, environ={"GEMINI_PROXY_UPSTREAM_KIND": "echo"}) \
        .upstreams["kimi"]["kind"] == "echo"
    config = load({"upstreams": {"kimi": kimi(kind="echo")}}, ["--upstream-kind", "openai"])
    assert config.upstreams["kimi"]["kind"] == "openai"


def test_default_model_file_then_env_then_flag():
    raw = {"upstreams": {"kimi": kimi()}, "default_model": "from-file"}
    assert route_of(load(raw), "gemini-2.5-pro") == ("kimi", "from-file")
    env = {"GEMINI_PROXY_MODEL": "from-env"}
    assert route_of(load(raw, environ=env), "gemini-2.5-pro") == ("kimi", "from-env")
    assert route_of(load(raw, ["--model", "from-flag"], env), "gemini-2.5-pro") \
        == ("kimi", "from-flag")


def test_upstream_flags_change_the_default_upstream_not_the_first():
    raw = {"upstreams": {"a": kimi(), "b": kimi()}, "default_upstream": "b"}
    config = load(raw, ["--upstream-url", "http://flag.example/v1"])
    assert config.upstreams["a"]["base_url"] == MOONSHOT
    assert config.upstreams["b"]["base_url"] == "http://flag.example/v1"


def test_upstream_key_flag_beats_api_key_env_from_the_file():
    # The file names an environment variable for the key; the command line gives the key
    # itself. Flags come last, so the flag's key is the one used.
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="KIMI_KEY")}}
    config = load(raw, ["--upstream-key", "sk-from-flag"], {"KIMI_KEY": "sk-from-env-var"})
    assert config.upstreams["kimi"]["api_key"] == "sk-from-flag"


def test_upstream_key_env_beats_api_key_env_from_the_file():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="KIMI_KEY")}}
    config = load(raw, environ={"KIMI_KEY": "sk-from-env-var",
                                "GEMINI_PROXY_UPSTREAM_KEY": "sk-from-proxy-env"})
    assert config.upstreams["kimi"]["api_key"] == "sk-from-proxy-env"


def test_upstream_key_flag_satisfies_a_missing_api_key_env():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="KIMI_KEY")}}
    config = load(raw, ["--upstream-key", "sk-from-flag"], {})
    assert config.upstreams["kimi"]["api_key"] == "sk-from-flag"


# ---- api_key_env -------------------------------------------------------------------------

def test_api_key_env_reads_the_variable():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="MOONSHOT_KEY")}}
    config = load(raw, environ={"MOONSHOT_KEY": "sk-moon-abcdef"})
    assert config.upstreams["kimi"]["api_key"] == "sk-moon-abcdef"
    assert "sk-moon-abcdef" in config.secrets()


def test_api_key_env_missing_disables_that_upstream_only():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="MOONSHOT_KEY"),
                         "local": {"base_url": "http://127.0.0.1:11434/v1"}}}
    config = load(raw, environ={"OTHER": "x"})
    assert config.disabled == {"kimi": "environment variable MOONSHOT_KEY is not set"}
    assert "local" not in config.disabled


def test_an_empty_key_variable_counts_as_missing():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="MOONSHOT_KEY"),
                         "local": {"base_url": "http://127.0.0.1:11434/v1"}}}
    assert "kimi" in load(raw, environ={"MOONSHOT_KEY": " , "}).disabled


def test_every_missing_key_variable_is_named_at_once_when_none_is_set():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="MOONSHOT_KEY"),
                         "claude": {"kind": "anthropic", "api_key_env": "ANTHROPIC_KEY"}}}
    message = config_error(raw, environ={"OTHER": "x"})
    assert "no upstream can be used" in message
    assert "kimi: environment variable MOONSHOT_KEY is not set" in message
    assert "claude: environment variable ANTHROPIC_KEY is not set" in message


# ---- unknown keys and "did you mean" ---------------------------------------------------

@pytest.mark.parametrize("raw, path, suggestion", [
    ({"upstream": {}}, "upstream", "upstreams"),
    ({"upstreams": {"kimi": kimi()}, "server": {"hots": "127.0.0.1"}}, "server.hots", "host"),
    ({"upstreams": {"kimi": kimi()}, "logging": {"levle": "info"}}, "logging.levle", "level"),
    ({"upstreams": {"kimi": kimi(read_timout=5)}}, "upstreams.kimi.read_timout",
     "read_timeout"),
    ({"upstreams": {"kimi": kimi()},
      "routes": [{"model": "a", "upstream": "kimi", "upstream_modle": "b"}]},
     "routes[0].upstream_modle", "upstream_model"),
    ({"upstreams": {"kimi": kimi()}, "default_upstream": "kimmi"}, "default_upstream", "kimi"),
    ({"upstreams": {"kimi": kimi()}, "routes": [{"model": "a", "upstream": "kimmi"}]},
     "routes[0].upstream", "kimi"),
])
def test_unknown_key_is_named_with_a_suggestion(raw, path, suggestion):
    message = config_error(raw)
    assert message.startswith(path + ":")
    assert "did you mean %r" % suggestion in message


def test_unknown_key_without_a_close_match_has_no_suggestion():
    message = config_error({"upstreams": {"kimi": kimi()}, "server": {"zzzzzz": 1}})
    assert message.startswith("server.zzzzzz: unknown key")
    assert "did you mean" not in message


# ---- bad values ------------------------------------------------------------------------

BAD_VALUES = [
    # (section patch, key path named, words in the message)
    ({"server": {"port": "8000"}}, "server.port", "whole number"),
    ({"server": {"port": -1}}, "server.port", "whole number"),
    ({"server": {"port": 70000}}, "server.port", "not a TCP port"),
    ({"server": {"port": True}}, "server.port", "whole number"),
    ({"server": {"workers": 0}}, "server.workers", "worker"),
    ({"server": {"allow_public": "yes"}}, "server.allow_public", "true or false"),
    ({"server": {"api_keys": "one-key"}}, "server.api_keys", "list of strings"),
    ({"server": {"api_keys": [123]}}, "server.api_keys", "list of strings"),
    ({"server": {"head_timeout": 0}}, "server.head_timeout", "> 0"),
    ({"server": {"host": 127}}, "server.host", "string"),
    ({"logging": {"level": "verbose"}}, "logging.level", "debug, info, warning, error"),
    ({"logging": {"detailed": 1}}, "logging.detailed", "true or false"),
    ({"upstreams": {"kimi": kimi(read_timeout="10")}}, "upstreams.kimi.read_timeout", "> 0"),
    ({"upstreams": {"kimi": kimi(read_timeout=0)}}, "upstreams.kimi.read_timeout", "> 0"),
    ({"upstreams": {"kimi": kimi(read_timeout=True)}}, "upstreams.kimi.read_timeout", "> 0"),
    ({"upstreams": {"kimi": kimi(retries=-1)}}, "upstreams.kimi.retries", "whole number"),
    ({"upstreams": {"kimi": kimi(retries=1.5)}}, "upstreams.kimi.retries", "whole number"),
    ({"upstreams": {"kimi": kimi(kind="claude")}}, "upstreams.kimi.kind",
     "openai, gemini, anthropic, openai-responses, code-assist, echo"),
    ({"upstreams": {"kimi": kimi(auth="basic")}}, "upstreams.kimi.auth", "bearer"),
    ({"upstreams": {"kimi": kimi(max_tokens_field="max")}}, "upstreams.kimi.max_tokens_field",
     "max_completion_tokens"),
    ({"upstreams": {"kimi": kimi(response_format="xml")}}, "upstreams.kimi.response_format",
     "json_object"),
    ({"upstreams": {"kimi": kimi(headers="x")}}, "upstreams.kimi.headers", "object"),
    ({"upstreams": {"kimi": kimi(headers={"x-a": 1})}}, "upstreams.kimi.headers", "string"),
    ({"upstreams": {"kimi": kimi(query={"api-version": 2024})}}, "upstreams.kimi.query",
     "string"),
    ({"upstreams": {"kimi": kimi(extra_body=[])}}, "upstreams.kimi.extra_body", "object"),
    ({"upstreams": {"kimi": kimi(models="kimi-k2")}}, "upstreams.kimi.models", "list"),
    ({"upstreams": {"kimi": kimi(send_top_k="true")}}, "upstreams.kimi.send_top_k",
     "true or false"),
    ({"upstreams": {"kimi": kimi(base_url=5)}}, "upstreams.kimi.base_url", "string"),
    ({"upstreams": {"kimi": kimi(base_url="ftp://files.example/v1")}},
     "upstreams.kimi.base_url", "http(s) URL"),
    ({"upstreams": {"kimi": kimi(base_url="ftp://example.com")}}, "upstreams.kimi.base_url",
     "http(s) URL"),
    ({"upstreams": {"kimi": "https://api.moonshot.cn/v1"}}, "upstreams.kimi", "object"),
    ({"upstreams": ["kimi"]}, "upstreams", "object"),
    ({"server": []}, "server", "object"),
    ({"server": "127.0.0.1"}, "server", "object"),
    ({"logging": "info"}, "logging", "object"),
    ({"logging": 5}, "logging", "object"),
    ({"routes": {"a": "kimi"}}, "routes", "list"),
    ({"routes": [{"model": "a"}]}, "routes[0]", "upstream"),
    ({"routes": ["a"]}, "routes[0]", "object"),
    ({"model_mapping": {"gemini-2.5-pro": 5}}, "model_mapping.gemini-2.5-pro", "model name"),
    ({"model_mapping": ["gemini-2.5-pro"]}, "model_mapping", "object"),
    ({"default_model": 5}, "default_model", "string"),
    ({"default_upstream": ["kimi"]}, "default_upstream", "string"),
]


def _bad_value_id(case):
    """The key path and the bad value, e.g. upstreams.kimi.read_timeout="10"."""
    patch, path = case[0], case[1]
    value = patch
    for name in path.split("."):
        if isinstance(value, dict) and name in value:
            value = value[name]
        else:
            value = next(iter(value.values())) if isinstance(value, dict) else value
            break
    return "%s=%s" % (path, json.dumps(value))


@pytest.mark.parametrize("patch, path, words", BAD_VALUES,
                         ids=[_bad_value_id(case) for case in BAD_VALUES])
def test_bad_value_is_named(patch, path, words):
    raw = {"upstreams": {"kimi": kimi()}}
    raw.update(patch)
    message = config_error(raw)
    assert message.startswith(path + ":") or message.startswith(path + " "), message
    assert words in message


def test_whole_numbers_are_accepted_for_seconds():
    config = load({"upstreams": {"kimi": kimi(read_timeout=30, retry_wait=2)}})
    assert config.upstreams["kimi"]["read_timeout"] == 30.0
    assert isinstance(config.upstreams["kimi"]["read_timeout"], float)


@pytest.mark.parametrize("name, text", [("GEMINI_PROXY_PORT", "eighty"),
                                        ("GEMINI_PROXY_PORT", "-1"),
                                        ("GEMINI_PROXY_WORKERS", "many"),
                                        ("GEMINI_PROXY_ALLOW_PUBLIC", "maybe"),
                                        ("GEMINI_PROXY_DETAILED_LOGS", "on-ish")])
def test_bad_environment_value_names_the_variable(name, text):
    message = config_error({"upstreams": {"kimi": kimi()}}, environ={name: text})
    assert message.startswith(name + ":")


def test_bad_log_level_in_environment_is_refused():
    message = config_error({"upstreams": {"kimi": kimi()}},
                           environ={"GEMINI_PROXY_LOG_LEVEL": "verbose"})
    assert "GEMINI_PROXY_LOG_LEVEL" in message


def test_bad_upstream_kind_in_environment_is_refused():
    message = config_error(environ={"GEMINI_PROXY_UPSTREAM_KIND": "bogus",
                                    "GEMINI_PROXY_UPSTREAM_URL": "http://x.example/v1"})
    assert "GEMINI_PROXY_UPSTREAM_KIND" in message or "kind" in message
    assert "bogus" in message


def test_bad_upstream_url_flag_is_refused():
    message = config_error(argv=["--upstream-url", "api.deepseek.com/v1"])
    assert "base_url" in message
    assert "api.deepseek.com/v1" in message


def test_bad_flag_choice_is_refused_by_the_parser():
    with pytest.raises(SystemExit) as info:
        gp.build_arg_parser().parse_args(["--upstream-kind", "bogus"])
    assert info.value.code == 2


# ---- comments --------------------------------------------------------------------------

def test_underscore_keys_are_comments_in_sections():
    raw = {"_comment": "top", "server": {"_why": "x", "port": 9005},
           "logging": {"_note": 1}, "upstreams": {"kimi": kimi(_note="spec comment")},
           "routes": [{"_note": "r", "model": "m", "upstream": "kimi"}]}
    config = load(raw)
    assert config.server["port"] == 9005
    assert "_note" not in config.upstreams["kimi"]
    assert "_why" not in config.server
    assert route_of(config, "m") == ("kimi", "m")


def test_underscore_key_is_a_comment_among_upstreams():
    raw = {"upstreams": {"_comment": "kimi is the cheap one", "kimi": kimi()}}
    config = load(raw)
    assert list(config.upstreams) == ["kimi"]


def test_underscore_key_is_a_comment_in_model_mapping():
    raw = {"upstreams": {"kimi": kimi()},
           "model_mapping": {"_comment": "pro goes to k2", "gemini-2.5-pro": "kimi-k2"}}
    config = load(raw)
    assert [r.pattern for r in config.routes] == ["gemini-2.5-pro", "*"]


# ---- the seed project's flat format ------------------------------------------------------

def test_seed_readme_example_loads_and_routes():
    config = load(SEED_README_EXAMPLE, ["--host", "127.0.0.1"])
    assert list(config.upstreams) == ["default"]
    upstream = config.upstreams["default"]
    assert upstream["kind"] == "openai"
    assert upstream["base_url"] == MOONSHOT
    assert upstream["api_key"] == "sk-your-kimi-api-key"
    assert route_of(config, "gemini-2.5-pro") == ("default", "kimi-k2-0711-preview")
    assert route_of(config, "gemini-2.5-flash") == ("default", "moonshot-v1-auto")
    assert route_of(config, "gemini-2.0-flash") == ("default", "kimi-k2-0711-preview")
    assert config.server["port"] == 8000
    assert config.logging["level"] == "info"
    assert config.logging["detailed"] is True
    assert config.logging["access_log"] is True
    assert config.logging["log_dir"] == "logs"


def test_seed_readme_example_as_written_is_refused_for_its_public_host():
    # It listens on 0.0.0.0 with no client keys: refused, with the reason and the way out.
    message = config_error(SEED_README_EXAMPLE)
    assert "0.0.0.0" in message
    assert "--allow-public" in message


def test_seed_readme_example_with_allow_public_loads():
    config = load(SEED_README_EXAMPLE, ["--allow-public"])
    assert config.server["host"] == "0.0.0.0"
    assert route_of(config, "gemini-2.5-pro") == ("default", "kimi-k2-0711-preview")


def test_seed_readme_text_with_trailing_comma_loads():
    # The seed's own config.json as published has this trailing comma.
    text = SEED_README_EXAMPLE.replace('"moonshot-v1-auto"\n', '"moonshot-v1-auto",\n')
    assert text != SEED_README_EXAMPLE
    config = load(text, ["--host", "127.0.0.1"])
    assert route_of(config, "gemini-2.5-flash") == ("default", "moonshot-v1-auto")


def test_seed_config_json_maps_logging_and_retry():
    config = load(SEED_CONFIG_JSON)
    upstream = config.upstreams["default"]
    assert upstream["base_url"] == MOONSHOT
    assert upstream["api_key"] == "sk-1234"
    assert upstream["retries"] == 3
    assert upstream["retry_wait"] == 2.0
    assert config.logging["level"] == "warning"
    assert config.logging["access_log"] is False
    assert config.logging["detailed"] is False
    assert config.logging["log_dir"] == "seed-logs"
    assert "log_level" not in config.server
    assert route_of(config, "gemini-2.5-pro") == ("default", "kimi-k2-0711-preview")


def test_seed_without_base_url_goes_to_openai():
    config = load({"openai_api_key": "sk-openai-xyz", "default_openai_model": "gpt-4o"})
    assert config.upstreams["default"]["base_url"] == "https://api.openai.com/v1"
    assert route_of(config, "gemini-2.5-pro") == ("default", "gpt-4o")


def test_seed_format_then_environment_and_flags_still_apply():
    config = load(SEED_CONFIG_JSON, ["--upstream-key", "sk-flag"],
                  {"GEMINI_PROXY_LOG_LEVEL": "debug", "GEMINI_PROXY_PORT": "8100"})
    assert config.upstreams["default"]["api_key"] == "sk-flag"
    assert config.logging["level"] == "debug"
    assert config.server["port"] == 8100


def test_seed_retry_unknown_key_is_named_with_a_suggestion():
    raw = dict(SEED_CONFIG_JSON, retry={"max_retry": 3})
    message = config_error(raw)
    assert "retry.max_retry" in message
    assert "did you mean 'max_retries'" in message


def test_seed_retry_must_be_an_object():
    message = config_error(dict(SEED_CONFIG_JSON, retry=3))
    assert message.startswith("retry:")


def test_seed_providers_list_is_rejected_with_help():
    raw = {"providers": [{"name": "kimi", "openai_api_key": "sk-x",
                          "openai_base_url": MOONSHOT}]}
    message = config_error(raw)
    assert message.startswith("providers:")
    assert "upstreams" in message and "routes" in message


# ---- no configuration at all -------------------------------------------------------------

def test_no_configuration_uses_local_ollama():
    config = load()
    assert config.upstreams["default"]["base_url"] == gp.OLLAMA_BASE_URL
    assert gp.OLLAMA_BASE_URL == "http://127.0.0.1:11434/v1"
    assert config.upstreams["default"]["kind"] == "openai"
    assert config.upstreams["default"]["api_key"] == ""
    assert route_of(config, "gemini-2.5-pro") == ("default", "gemini-2.5-pro")


def test_no_configuration_uses_openai_environment():
    env = {"OPENAI_BASE_URL": "https://api.deepseek.com/v1", "OPENAI_API_KEY": "sk-deep-1",
           "OPENAI_MODEL": "deepseek-chat"}
    config = load(environ=env)
    assert config.upstreams["default"]["base_url"] == "https://api.deepseek.com/v1"
    assert config.upstreams["default"]["api_key"] == "sk-deep-1"
    assert route_of(config, "gemini-2.5-pro") == ("default", "deepseek-chat")


def test_openai_api_key_alone_goes_to_openai():
    config = load(environ={"OPENAI_API_KEY": "sk-openai-1"})
    assert config.upstreams["default"]["base_url"] == "https://api.openai.com/v1"
    assert config.upstreams["default"]["api_key"] == "sk-openai-1"


def test_openai_environment_is_ignored_when_a_file_declares_upstreams():
    env = {"OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "sk-openai-1",
           "OPENAI_MODEL": "gpt-4o"}
    config = load({"upstreams": {"kimi": kimi()}}, environ=env)
    assert list(config.upstreams) == ["kimi"]
    assert config.upstreams["kimi"]["api_key"] == "sk-kimi-0123456789"
    assert route_of(config, "gemini-2.5-pro") == ("kimi", "gemini-2.5-pro")


def test_explicit_upstream_url_does_not_take_the_openai_key():
    # OPENAI_API_KEY belongs to OPENAI_BASE_URL; it must not travel to another host.
    env = {"GEMINI_PROXY_UPSTREAM_URL": "http://127.0.0.1:8080/v1",
           "OPENAI_BASE_URL": "https://api.openai.com/v1", "OPENAI_API_KEY": "sk-openai-1"}
    config = load(environ=env)
    assert config.upstreams["default"]["base_url"] == "http://127.0.0.1:8080/v1"
    assert config.upstreams["default"]["api_key"] == ""


def test_upstream_flags_without_a_file():
    config = load(argv=["--upstream-url", "https://api.deepseek.com/v1",
                        "--upstream-key", "sk-deep-2", "--model", "deepseek-chat"])
    upstream = config.upstreams["default"]
    assert (upstream["kind"], upstream["base_url"], upstream["api_key"]) == \
        ("openai", "https://api.deepseek.com/v1", "sk-deep-2")
    assert route_of(config, "gemini-2.5-flash") == ("default", "deepseek-chat")


def test_upstream_environment_without_a_file():
    env = {"GEMINI_PROXY_UPSTREAM_KIND": "openai",
           "GEMINI_PROXY_UPSTREAM_URL": "http://127.0.0.1:8001/v1",
           "GEMINI_PROXY_UPSTREAM_KEY": "sk-vllm", "GEMINI_PROXY_MODEL": "qwen3"}
    config = load(environ=env)
    upstream = config.upstreams["default"]
    assert (upstream["base_url"], upstream["api_key"]) == ("http://127.0.0.1:8001/v1", "sk-vllm")
    assert route_of(config, "gemini-2.5-pro") == ("default", "qwen3")


def test_echo_kind_needs_no_url():
    config = load(environ={"GEMINI_PROXY_UPSTREAM_KIND": "echo"})
    assert config.upstreams["default"]["kind"] == "echo"
    assert config.upstreams["default"]["base_url"] == ""


def test_model_flag_alone_keeps_the_ollama_fallback():
    config = load(argv=["--model", "llama3:8b"])
    assert config.upstreams["default"]["base_url"] == gp.OLLAMA_BASE_URL
    assert route_of(config, "gemini-2.5-pro") == ("default", "llama3:8b")


# ---- routes --------------------------------------------------------------------------------

def routed(routes, **extra):
    raw = {"upstreams": {"kimi": kimi(), "deep": kimi(base_url="https://api.deepseek.com/v1"),
                         "local": {"kind": "echo"}},
           "default_upstream": "local", "routes": routes}
    raw.update(extra)
    return load(raw)


def test_exact_route_beats_an_earlier_glob():
    config = routed([{"model": "gemini-*", "upstream": "deep", "upstream_model": "deepseek"},
                     {"model": "gemini-2.5-pro", "upstream": "kimi", "upstream_model": "k2"}])
    assert route_of(config, "gemini-2.5-pro") == ("kimi", "k2")
    assert route_of(config, "gemini-2.5-flash") == ("deep", "deepseek")


def test_globs_match_in_the_order_written():
    config = routed([{"model": "gemini-*-flash*", "upstream": "deep", "upstream_model": "fast"},
                     {"model": "gemini-*", "upstream": "kimi", "upstream_model": "k2"}])
    assert route_of(config, "gemini-2.5-flash-lite") == ("deep", "fast")
    assert route_of(config, "gemini-2.5-pro") == ("kimi", "k2")
    config = routed([{"model": "gemini-*", "upstream": "kimi", "upstream_model": "k2"},
                     {"model": "gemini-*-flash*", "upstream": "deep", "upstream_model": "fast"}])
    assert route_of(config, "gemini-2.5-flash-lite") == ("kimi", "k2")


def test_glob_character_class_and_question_mark():
    config = routed([{"model": "gemini-2.5-[pf]*", "upstream": "kimi"},
                     {"model": "gemini-?", "upstream": "deep"}])
    assert route_of(config, "gemini-2.5-pro")[0] == "kimi"
    assert route_of(config, "gemini-2.5-flash")[0] == "kimi"
    assert route_of(config, "gemini-3")[0] == "deep"
    assert route_of(config, "gemini-2.5-xl")[0] == "local"


def test_exact_match_is_case_sensitive_and_whole():
    config = routed([{"model": "gemini-2.5-pro", "upstream": "kimi"}])
    assert route_of(config, "Gemini-2.5-Pro")[0] == "local"
    assert route_of(config, "gemini-2.5-pro-preview")[0] == "local"


def test_catch_all_goes_to_default_upstream_with_the_model_unchanged():
    config = routed([{"model": "gemini-2.5-pro", "upstream": "kimi", "upstream_model": "k2"}])
    route, model = gp.resolve_route(config, "some-other-model")
    assert (route.pattern, route.upstream, model) == ("*", "local", "some-other-model")
    assert config.routes[-1].pattern == "*"


def test_catch_all_uses_default_model_when_set():
    config = routed([], default_model="kimi-k2-0711-preview")
    assert route_of(config, "anything") == ("local", "kimi-k2-0711-preview")


def test_default_upstream_is_the_first_when_not_named():
    config = load({"upstreams": {"kimi": kimi(), "deep": kimi()}})
    assert config.default_upstream == "kimi"
    assert route_of(config, "x") == ("kimi", "x")


def test_empty_upstream_model_keeps_the_client_name():
    config = routed([{"model": "gemini-*", "upstream": "kimi"},
                     {"model": "exact-one", "upstream": "deep", "upstream_model": ""}])
    assert route_of(config, "gemini-2.5-pro") == ("kimi", "gemini-2.5-pro")
    assert route_of(config, "exact-one") == ("deep", "exact-one")


def test_model_mapping_routes_to_the_default_upstream_after_explicit_routes():
    config = routed([{"model": "gemini-*", "upstream": "kimi", "upstream_model": "k2"}],
                    model_mapping={"gemini-2.5-flash": "fast-one", "gemini-3-*": "three"})
    # the exact mapping beats the earlier glob route
    assert route_of(config, "gemini-2.5-flash") == ("local", "fast-one")
    # an exact name in routes beats the same name in model_mapping
    config2 = routed([{"model": "gemini-2.5-flash", "upstream": "kimi"}],
                     model_mapping={"gemini-2.5-flash": "fast-one"})
    assert route_of(config2, "gemini-2.5-flash") == ("kimi", "gemini-2.5-flash")
    # the explicit glob route comes before the mapping's glob
    assert route_of(config, "gemini-3-pro") == ("kimi", "k2")
    assert [r.pattern for r in config.routes] == ["gemini-*", "gemini-2.5-flash", "gemini-3-*",
                                                  "*"]


def test_resolve_route_without_any_match_is_a_404():
    config = gp.Config(server=dict(gp.SERVER_DEFAULTS), upstreams={}, routes=[
        gp.Route("gemini-*", "kimi")], logging=dict(gp.LOGGING_DEFAULTS), default_upstream="kimi")
    with pytest.raises(gp.ClientError) as info:
        gp.resolve_route(config, "gpt-4o")
    assert info.value.status == 404
    assert "gpt-4o" in info.value.message


# ---- listening on a public address --------------------------------------------------------

@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.com", ""])
def test_public_host_without_client_keys_is_refused(host):
    message = config_error({"upstreams": {"kimi": kimi()}, "server": {"host": host}})
    assert message.startswith("refusing to listen on %s" % host)
    assert "no client keys" in message
    assert "server.api_keys" in message and "--allow-public" in message


def test_public_host_flag_is_refused():
    message = config_error(argv=["--upstream-kind", "echo", "--host", "0.0.0.0"])
    assert "0.0.0.0" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_are_allowed(host):
    assert load(argv=["--upstream-kind", "echo", "--host", host]).server["host"] == host


@pytest.mark.parametrize("how", ["file", "env", "flag"])
def test_client_keys_allow_a_public_host(how):
    raw = {"upstreams": {"kimi": kimi()}, "server": {"host": "0.0.0.0"}}
    argv, env = [], {}
    if how == "file":
        raw["server"]["api_keys"] = ["client-key-1"]
    elif how == "env":
        env["GEMINI_PROXY_API_KEYS"] = "client-key-1"
    else:
        argv = ["--api-key", "client-key-1"]
    config = load(raw, argv, env)
    assert config.server["host"] == "0.0.0.0"
    assert config.server["api_keys"] == ["client-key-1"]


@pytest.mark.parametrize("how", ["file", "env", "flag"])
def test_allow_public_allows_a_public_host(how):
    raw = {"upstreams": {"kimi": kimi()}, "server": {"host": "0.0.0.0"}}
    argv, env = [], {}
    if how == "file":
        raw["server"]["allow_public"] = True
    elif how == "env":
        env["GEMINI_PROXY_ALLOW_PUBLIC"] = "1"
    else:
        argv = ["--allow-public"]
    config = load(raw, argv, env)
    assert config.server["allow_public"] is True
    assert config.server["api_keys"] == []


def test_public_host_from_environment_is_refused():
    message = config_error({"upstreams": {"kimi": kimi()}},
                           environ={"GEMINI_PROXY_HOST": "0.0.0.0"})
    assert "refusing to listen on 0.0.0.0" in message


# ---- secrets ---------------------------------------------------------------------------

def test_secrets_are_every_key_header_query_value_and_url_password():
    raw = {"server": {"api_keys": ["client-key-1", "client-key-2"]},
           "upstreams": {
               "kimi": kimi(api_key="sk-kimi-secret"),
               "azure": kimi(api_key="", api_key_env="AZ_KEY", auth="api-key",
                             base_url="https://bob:pa%24%24word@az.example/v1",
                             query={"api-version": "2024-10-21", "sig": "query-secret"},
                             headers={"X-Custom-Auth": "hdr-secret-1",
                                      "Authorization": "Bearer hdr-secret-2"}),
               "local": {"kind": "echo"}}}
    config = load(raw, environ={"AZ_KEY": "az-secret-from-env"})
    assert sorted(config.secrets()) == sorted([
        "client-key-1", "client-key-2", "sk-kimi-secret", "az-secret-from-env",
        "hdr-secret-1", "Bearer hdr-secret-2", "2024-10-21", "query-secret", "bob",
        "pa$$word"])


def test_secrets_include_keys_from_flags_and_environment():
    config = load(argv=["--upstream-url", "http://127.0.0.1:9/v1", "--upstream-key", "sk-flag",
                        "--api-key", "client-flag"])
    assert sorted(config.secrets()) == ["client-flag", "sk-flag"]
    config = load(environ={"OPENAI_API_KEY": "sk-openai-env"})
    assert config.secrets() == ["sk-openai-env"]


def test_secrets_empty_without_keys():
    assert load().secrets() == []


# ---- key pools, fallbacks and the resilience settings (issue 4) ---------------------------

def test_api_key_and_api_keys_make_one_pool_each_key_once():
    config = load({"upstreams": {"kimi": kimi(api_keys=["sk-two-222222", "sk-kimi-0123456789",
                                                        "sk-three-33333"])}})
    spec = config.upstreams["kimi"]
    assert spec["api_keys"] == ["sk-kimi-0123456789", "sk-two-222222", "sk-three-33333"]
    assert spec["api_key"] == "sk-kimi-0123456789"
    assert {"sk-two-222222", "sk-three-33333"} <= set(config.secrets())


def test_api_key_env_may_hold_several_keys():
    raw = {"upstreams": {"kimi": kimi(api_key="", api_key_env="KIMI_KEYS")}}
    config = load(raw, environ={"KIMI_KEYS": "sk-a-111111, sk-b-222222,,"})
    assert config.upstreams["kimi"]["api_keys"] == ["sk-a-111111", "sk-b-222222"]
    assert "sk-b-222222" in config.secrets()


def test_upstream_key_flag_replaces_the_whole_pool():
    raw = {"upstreams": {"kimi": kimi(api_keys=["sk-two-222222"])}}
    config = load(raw, ["--upstream-key", "sk-from-flag"])
    assert config.upstreams["kimi"]["api_keys"] == ["sk-from-flag"]


def test_fallbacks_as_names_or_objects():
    raw = {"upstreams": {"kimi": kimi(), "ds": kimi(), "local": kimi()},
           "routes": [{"model": "gemini-*", "upstream": "kimi", "upstream_model": "k2",
                       "fallbacks": ["ds", {"upstream": "local", "upstream_model": "qwen"}]}]}
    config = load(raw)
    assert config.routes[0].fallbacks == [("ds", ""), ("local", "qwen")]
    assert gp.route_candidates(config, "gemini-2.5-pro") == [
        ("kimi", "k2"), ("ds", "gemini-2.5-pro"), ("local", "qwen")]
    assert gp.route_candidates(config, "other") == [("kimi", "other")]


@pytest.mark.parametrize("fallbacks, path, words", [
    ("ds", "routes[0].fallbacks", "expected a list"),
    ([{"model": "x"}], "routes[0].fallbacks[0].model", "unknown key"),
    ([{"upstream_model": "x"}], "routes[0].fallbacks[0]", "needs \"upstream\""),
    (["dss"], "routes[0].fallbacks[0]", "no upstream named 'dss' (did you mean 'ds'?)"),
    ([3], "routes[0].fallbacks[0]", "expected an object"),
])
def test_bad_fallbacks_are_named(fallbacks, path, words):
    raw = {"upstreams": {"kimi": kimi(), "ds": kimi()},
           "routes": [{"model": "*", "upstream": "kimi", "fallbacks": fallbacks}]}
    message = config_error(raw)
    assert message.startswith(path + ":") and words in message


@pytest.mark.parametrize("field, value, words", [
    ("key_strategy", "random", "is not one of round_robin, least_recently_failed"),
    ("cooldown_scope", "project", "is not one of auto, key, model"),
    ("upstream_streaming", "sometimes", "is not one of match, always, never"),
    ("stop_strings", "END", "expected a list of strings"),
    ("wait_for_keys", "yes", "expected true or false"),
    ("cooldown", 0, "expected a number > 0"),
    ("total_timeout", -1, "expected a number >= 0"),
    ("max_concurrency", 1.5, "whole number"),
])
def test_bad_resilience_values_are_named(field, value, words):
    message = config_error({"upstreams": {"kimi": kimi(**{field: value})}})
    assert message.startswith("upstreams.kimi.%s:" % field) and words in message


def test_zero_is_allowed_where_it_means_none():
    config = load({"upstreams": {"kimi": kimi(total_timeout=0, retry_wait=0, cooldown_jitter=0,
                                              cooldown_floor=0)}})
    assert config.upstreams["kimi"]["total_timeout"] == 0.0

