"""Settings: environment and `.env`, validation messages that name the variable, the run directory, the token."""

from __future__ import annotations

import stat

import pytest

from app import sentinel
from app.config import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_URL,
    PROJECT_ROOT,
    ensure_admin_token,
    env_redis_url,
    load_settings,
    redact,
)
from app.errors import ConfigError

TOKEN = "t" * 16


@pytest.fixture
def home(tmp_path):
    return tmp_path / "run"


def settings(home, **env):
    return load_settings(environ={"BULLRQ_HOME": str(home), **env})


def test_defaults(home):
    s = settings(home)
    assert (s.redis_url, s.redis_url_source) == (DEFAULT_REDIS_URL, "default")
    assert (s.database_url, s.database_url_source) == (DEFAULT_DATABASE_URL, "default")
    assert s.admin_token is None
    assert s.debug is False
    assert s.timezone == "UTC"
    assert s.log_format == "text"
    assert s.home.root == home.resolve()


def test_run_dir_defaults_to_var_under_the_project():
    assert load_settings(environ={}).home.root == PROJECT_ROOT / "var"


def test_bullrq_home_moves_the_run_dir(home):
    s = settings(home)
    assert s.home.pid_file("sync") == home.resolve() / "pids" / "sync.pid"
    assert s.home.worker_log("sync") == home.resolve() / "logs" / "workers" / "sync.log"
    assert s.home.token_file.parent == home.resolve()


def test_redis_url_from_env(home):
    s = settings(home, REDIS_URL="redis://cache.internal:6380/2", DATABASE_URL="postgres://u:p@db/x")
    assert (s.redis_url, s.redis_url_source) == ("redis://cache.internal:6380/2", "env")
    assert (s.database_url, s.database_url_source) == ("postgres://u:p@db/x", "env")


def test_redis_host_port_password_build_a_url(home):
    s = settings(home, REDIS_HOST="cache", REDIS_PORT="6390", REDIS_PASSWORD="p@ss/w:rd")
    assert s.redis_url == "redis://:p%40ss%2Fw%3Ard@cache:6390/0"
    assert s.redis_url_source == "env"
    assert settings(home, REDIS_HOST="cache").redis_url == "redis://cache:6379/0"


def test_redis_url_wins_over_host(home):
    assert settings(home, REDIS_URL="redis://a:1/0", REDIS_HOST="b").redis_url == "redis://a:1/0"


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL"),
        ({"DATABASE_URL": "mysql://localhost/x"}, "DATABASE_URL"),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "http"}, "REDIS_PORT"),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "70000"}, "REDIS_PORT"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"TZ": "Mars/Olympus"}, "TZ"),
        ({"BULLRQ_TIMEZONE": "Nowhere/City"}, "BULLRQ_TIMEZONE"),
        ({"ADMIN_TOKEN": "short"}, "ADMIN_TOKEN"),
        ({"BULL_BOARD_ACCESS_TOKEN": "short"}, "BULL_BOARD_ACCESS_TOKEN"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"REDIS_SENTINELS": "s1:26379"}, "REDIS_SENTINEL_MASTER"),
        ({"REDIS_SENTINELS": "s1:http", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1,,s2", "REDIS_SENTINEL_MASTER": "m"}, "REDIS_SENTINELS"),
        ({"REDIS_SENTINELS": "s1", "REDIS_SENTINEL_MASTER": "m", "REDIS_DB": "two"}, "REDIS_DB"),
        ({"REDIS_URL": "redis+sentinel://s1:26379"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://s1:99999/m/0"}, "REDIS_URL"),
        ({"REDIS_URL": "redis+sentinel://s1/m/zero"}, "REDIS_URL"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(home, env, variable):
    with pytest.raises(ConfigError, match=variable):
        settings(home, **env)


def test_bad_url_message_hides_the_password(home):
    with pytest.raises(ConfigError) as excinfo:
        settings(home, REDIS_URL="http://:hunter2@localhost")
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False)])
def test_debug_booleans(home, raw, expected):
    assert settings(home, DEBUG=raw).debug is expected


def test_admin_token_and_its_alias(home):
    assert settings(home, ADMIN_TOKEN=TOKEN).admin_token == TOKEN
    assert settings(home, BULL_BOARD_ACCESS_TOKEN=TOKEN).admin_token == TOKEN
    assert settings(home, ADMIN_TOKEN=TOKEN, BULL_BOARD_ACCESS_TOKEN="b" * 16).admin_token == TOKEN


def test_timezone_and_log_format(home):
    s = settings(home, TZ=":Europe/Lisbon", LOG_FORMAT="JSON")
    assert s.timezone == "Europe/Lisbon"
    assert s.tz.key == "Europe/Lisbon"
    assert s.log_format == "json"
    assert settings(home, TZ="Europe/Lisbon", BULLRQ_TIMEZONE="America/Sao_Paulo").timezone == "America/Sao_Paulo"


def test_urls_published_in_the_run_dir_are_used_when_env_is_unset(home):
    run = settings(home).home
    run.redis_url_file.parent.mkdir(parents=True)
    run.redis_url_file.write_text("redis://127.0.0.1:40001/0\n")
    run.database_url_file.parent.mkdir(parents=True)
    run.database_url_file.write_text("postgresql://bullrq@127.0.0.1:40002/bullrq\n")
    s = settings(home)
    assert (s.redis_url, s.redis_url_source) == ("redis://127.0.0.1:40001/0", "run-dir")
    assert (s.database_url, s.database_url_source) == ("postgresql://bullrq@127.0.0.1:40002/bullrq", "run-dir")
    s = settings(home, REDIS_URL="redis://elsewhere:6379/0")
    assert s.redis_url_source == "env"
    assert s.database_url_source == "run-dir"


def test_sentinel_variables_build_a_sentinel_url_that_parses_back(home):
    s = settings(
        home,
        REDIS_SENTINELS="10.0.0.1:26379, 10.0.0.2:26380,sentinel-3",
        REDIS_SENTINEL_MASTER="bullrq",
        REDIS_PASSWORD="p@ss/w:rd",
        REDIS_SENTINEL_PASSWORD="s&cret",
        REDIS_DB="3",
    )
    assert s.redis_url_source == "env"
    assert s.redis_url.startswith("redis+sentinel://")
    assert sentinel.parse(s.redis_url) == sentinel.SentinelTarget(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-3", 26379)),
        master="bullrq",
        db=3,
        password="p@ss/w:rd",
        sentinel_password="s&cret",
    )
    assert redact(s.redis_url) == (
        "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26380,sentinel-3:26379/bullrq/3?sentinel_password=***"
    )


def test_sentinels_win_over_host_and_a_sentinel_redis_url_is_taken_as_is(home):
    s = settings(home, REDIS_SENTINELS="s1", REDIS_SENTINEL_MASTER="m", REDIS_HOST="ignored")
    assert sentinel.parse(s.redis_url) == sentinel.SentinelTarget(sentinels=(("s1", 26379),), master="m")
    url = "redis+sentinel://user:pw@[::1]:26379,s2:1/main/1"
    assert settings(home, REDIS_URL=url, REDIS_SENTINELS="s9", REDIS_SENTINEL_MASTER="x").redis_url == url
    target = sentinel.parse(url)
    assert (target.sentinels, target.master, target.db) == ((("::1", 26379), ("s2", 1)), "main", 1)
    assert (target.username, target.password, target.sentinel_password) == ("user", "pw", None)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:hunter2@s1:x/m",
        "redis+sentinel://:hunter2/x@s1:26379,s2:26379/m",  # an unescaped / ends the address part early
        "redis+sentinel://:pw@s1/hunter2@x/m",
        "redis+sentinel://:pw@s1/m/hunter2",
    ],
)
def test_a_bad_sentinel_url_is_refused_without_quoting_any_of_it(home, url):
    for variable in ("REDIS_URL", "CACHE_REDIS_URL"):
        with pytest.raises(ConfigError, match=variable) as excinfo:
            env_redis_url({variable: url}, variable)
        assert "hunter2" not in str(excinfo.value)
    with pytest.raises(ConfigError):
        settings(home, REDIS_URL=url)


def test_sentinel_addresses_ipv6_and_escapes():
    target = sentinel.parse("redis+sentinel://:a%2Bb+c@h1,[::1],[fe80::2]:26380/m?sentinel_password=x%2By+z")
    assert target.sentinels == (("h1", 26379), ("::1", 26379), ("fe80::2", 26380))
    assert (target.password, target.sentinel_password) == ("a+b+c", "x+y+z")  # a + is a +, not a space
    assert sentinel.parse(target.url()) == target
    for bad in ("::1", "h1:0", "h1:²", "[::1", ""):
        with pytest.raises(ConfigError, match="REDIS_SENTINELS: sentinel address 1"):
            sentinel.parse_addresses(bad, "REDIS_SENTINELS")
    with pytest.raises(ConfigError, match="REDIS_DB"):
        sentinel.parse_db("²", "REDIS_DB")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        ("redis+sentinel://:pw@s:1,t:2/m/0?sentinel_password=sp", "redis+sentinel://:***@s:1,t:2/m/0?sentinel_password=***"),
        ("redis://:a@b@host:6379/0", "redis://:***@host:6379/0"),  # an unescaped @ in the password
        ("postgresql://user:secret@db:5432/x", "postgresql://user:***@db:5432/x"),
        ("redis://host:6379/0", "redis://host:6379/0"),
    ],
)
def test_redact(url, expected):
    assert redact(url) == expected


def test_ensure_admin_token_generates_once(home):
    s = settings(home)
    token = ensure_admin_token(s)
    assert len(token) >= 16
    assert stat.S_IMODE(s.home.token_file.stat().st_mode) == 0o600
    assert s.home.token_file.read_text().strip() == token
    assert ensure_admin_token(settings(home)) == token


def test_ensure_admin_token_returns_the_configured_one(home):
    s = settings(home, ADMIN_TOKEN=TOKEN)
    assert ensure_admin_token(s) == TOKEN
    assert not s.home.token_file.exists()


def test_dotenv_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    dotenv = tmp_path / ".env"
    dotenv.write_text("REDIS_URL=redis://from-dotenv:6379/1\nDEBUG=true\nLOG_FORMAT=json\n")
    monkeypatch.setenv("BULLRQ_DOTENV", str(dotenv))
    for name in ("REDIS_URL", "DEBUG", "LOG_FORMAT"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert (s.redis_url, s.redis_url_source) == ("redis://from-dotenv:6379/1", "env")
    assert s.debug is True
    assert s.log_format == "json"

    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/2")
    monkeypatch.setenv("DEBUG", "0")
    s = load_settings()
    assert s.redis_url == "redis://from-env:6379/2"
    assert s.debug is False
    assert s.log_format == "json"
