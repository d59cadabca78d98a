"""Settings precedence and the one-sentence errors for bad values."""

from pathlib import Path

import pytest

from meshlb.config import ConfigError, load_settings, parse_host_port


def test_defaults_when_nothing_is_given() -> None:
    s = load_settings(None, {}, environ={})
    assert s.http == "0.0.0.0:11435"
    assert s.gossip == "0.0.0.0:7946"
    assert s.ollama == "http://127.0.0.1:11434"
    assert s.max_concurrency == 4 and s.rpm is None and s.max_queue == 1000


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("rpm: 10\ntpm: 1000\nmax-queue: 7\n")
    env = {"MESHLB_RPM": "20", "MESHLB_TPM": "2000"}
    s = load_settings(cfg, {"rpm": "30"}, environ=env)
    assert s.rpm == 30  # flag
    assert s.tpm == 2000  # env over file
    assert s.max_queue == 7  # file over default ('-' in keys accepted)
    assert s.aging_s == 30.0  # default


def test_join_from_env_is_comma_separated() -> None:
    s = load_settings(None, {}, environ={"MESHLB_JOIN": "10.0.0.1:7946, 10.0.0.2:7946"})
    assert s.join == ["10.0.0.1:7946", "10.0.0.2:7946"]


def test_join_flags_tuple_become_list() -> None:
    s = load_settings(None, {"join": ("a:1", "b:2")}, environ={})
    assert s.join == ["a:1", "b:2"]


@pytest.mark.parametrize(
    ("flags", "key", "fragment"),
    [
        ({"rpm": "abc"}, "rpm", "integer"),
        ({"rpm": "0"}, "rpm", "greater than or equal to 1"),
        ({"http": "11435"}, "http", "HOST:PORT"),
        ({"gossip": "x:99999"}, "gossip", "outside 0-65535"),
        ({"ollama": "localhost:11434"}, "ollama", "http://"),
        ({"log_format": "xml"}, "log_format", "'json' or 'console'"),
        ({"join": ("nope",)}, "join", "HOST:PORT"),
        ({"cluster_key": "short"}, "cluster_key", "at least 8"),
    ],
)
def test_bad_values_name_key_value_and_reason(
    flags: dict[str, object], key: str, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, flags, environ={})
    assert info.value.key.split(".")[0] == key
    assert fragment in info.value.why
    assert key in str(info.value)


def test_unknown_yaml_key_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("max_concurency: 3\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg, {}, environ={})
    assert info.value.key == "max_concurency"
    assert "unknown key" in info.value.why


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    cfg = tmp_path / "m.yaml"
    cfg.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(cfg, {}, environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(Path("/nonexistent/meshlb.yaml"), {}, environ={})


def test_example_config_is_valid() -> None:
    example = Path(__file__).parents[2] / "config" / "meshlb.yaml"
    s = load_settings(example, {}, environ={})
    assert s.http == "0.0.0.0:11435"


def test_parse_host_port_forms() -> None:
    assert parse_host_port("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_host_port(":80") == ("0.0.0.0", 80)
    assert parse_host_port("[::1]:80") == ("::1", 80)


def test_every_setting_is_a_flag_an_env_variable_and_a_yaml_key() -> None:
    """Issue 9, defect 9: the three lists are the same set (none is file-only)."""
    import re

    from meshlb.commands.node import node_command
    from meshlb.config import FIELD_NAMES, read_env

    flags = {p.name for p in node_command.params} - {"config_file"}
    env = set(read_env({f"MESHLB_{n.upper()}": "1" for n in FIELD_NAMES}))
    shipped = Path(__file__).parents[2] / "config" / "meshlb.yaml"
    yaml_keys = set(re.findall(r"^#? ?([a-z_]+):", shipped.read_text(), re.MULTILINE))
    assert flags == env == yaml_keys == set(FIELD_NAMES)


def test_every_flag_reaches_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from meshlb.commands import node as node_cmd

    seen: dict[str, object] = {}

    def fake_load(config_file: object, flags: dict[str, object]) -> None:
        seen.update(flags)
        raise ConfigError("x", 1, "stop here")

    monkeypatch.setattr(node_cmd, "load_settings", fake_load)
    result = CliRunner().invoke(
        node_cmd.node_command,
        ["--max-body-bytes", "2048", "--aging-s", "5", "--request-timeout-s", "9"],
    )
    assert result.exit_code == 2
    assert seen["max_body_bytes"] == "2048" and seen["aging_s"] == "5"
    assert seen["request_timeout_s"] == "9"


def test_advertise_never_0_0_0_0() -> None:
    with pytest.raises(ConfigError, match="cannot dial"):
        load_settings(None, {"advertise": "0.0.0.0"}, environ={})
