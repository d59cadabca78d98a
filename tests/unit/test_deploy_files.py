"""The deploy files (deploy/**) checked offline, against the node they deploy.

What each check stands on:
- systemd: `systemd-analyze verify` and `systemd-analyze security --offline` (Debian's
  `systemd`; skipped where the tool is missing) plus our own reading of the unit.
- Compose: the Compose Specification's JSON schema as vendored by `check-jsonschema`
  (a PyPI package, in the `test` extra), plus the mesh wiring (joins, ports, mounts).
- Kubernetes: the strict JSON schemas that `kubernetes-validate` (PyPI, `test` extra)
  ships for each Kubernetes release, plus probes, seeds, grace period and Secret.
- Grafana and Prometheus: the JSON/YAML structure, and every metric name in every
  expression is one SPEC.md names (or one of the few the alerts need) and one the
  node's collector exports; `promtool check`/`promtool test rules` where promtool is
  installed (Debian's `prometheus`).
- Docker: the Dockerfile's EXPOSE, ENTRYPOINT, HEALTHCHECK, user and .dockerignore
  against the node's defaults (read from `meshlb.config`, not copied here), and the
  entrypoint plus healthcheck run for real against a node of this checkout.

Defaults come from `NodeSettings` and the drain bound from `meshlb.node`, so a
changed default makes these tests fail until the deploy files follow.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from meshlb.config import FIELD_NAMES, NodeSettings, load_settings, parse_host_port
from meshlb.node import DRAIN_TIMEOUT_S
from tests.procs import free_gossip_port, free_port, spawn

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
FIXTURES = ROOT / "tests" / "fixtures"
UNIT = DEPLOY / "systemd" / "meshlb.service"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "compose" / "compose.yaml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "meshlb.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
# Kubernetes releases the manifests must validate against: 1.29 is the first with
# native sidecar containers (the Ollama init container with restartPolicy: Always).
K8S_VERSIONS = ("1.29.0", "latest")


def default_port(name: str) -> int:
    default = NodeSettings.model_fields[name].default
    return parse_host_port(default)[1]


HTTP_PORT = default_port("http")
GOSSIP_PORT = default_port("gossip")

# ---- metric names ---------------------------------------------------------------

# The families SPEC.md "Mesh and node" names, by type (counters are scraped with
# `_total`, histograms as `_bucket`/`_sum`/`_count`).
SPEC_COUNTERS = (
    "meshlb_requests",
    "meshlb_tokens",
    "meshlb_placements",
    "meshlb_model_loads",
    "meshlb_gossip_packets_dropped",
)
SPEC_HISTOGRAMS = (
    "meshlb_queue_wait_seconds",
    "meshlb_time_to_first_token_seconds",
    "meshlb_request_duration_seconds",
)
SPEC_GAUGES = ("meshlb_tasks", "meshlb_members")
# Gauges the dashboard and the alerts need beyond SPEC's list (issue 14 item 3).
ASSUMED_GAUGES = ("meshlb_ollama_up", "meshlb_quorum", "meshlb_queue_depth", "meshlb_queue_max")
# Prometheus's own per-target series.
PROMETHEUS_SERIES = ("up",)


def allowed_series() -> set[str]:
    names = {f"{c}_total" for c in SPEC_COUNTERS}
    names |= {f"{h}{s}" for h in SPEC_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
    return names | set(SPEC_GAUGES) | set(ASSUMED_GAUGES) | set(PROMETHEUS_SERIES)


def family_of(series: str) -> str:
    """`meshlb_tokens_total` -> `meshlb_tokens`, `x_seconds_bucket` -> `x_seconds`."""
    for suffix in ("_total", "_bucket", "_sum", "_count"):
        if series.endswith(suffix) and series.removesuffix(suffix) in (
            *SPEC_COUNTERS,
            *SPEC_HISTOGRAMS,
        ):
            return series.removesuffix(suffix)
    return series


PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
    | {"group_left", "group_right", "inf", "nan", "atan2"}
)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, labels, keywords removed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors, [5m], [$__rate_interval]
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # grouping label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        if word.lower() in PROMQL_WORDS or re.match(r"\s*\(", text[m.end() :]):
            continue  # a keyword, or a function / aggregation call
        names.add(word)
    return names


def test_metric_name_extraction_sees_through_promql() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, node) (rate(a_bucket{node=~"$node",x="y(z)"}'
        "[$__rate_interval]))) / on (node) group_left b > 0.8 and c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b", "c"}
    assert metric_names("up == 0") == {"up"}
    assert metric_names('sum without (instance) (meshlb_members{state="dead"})') == {
        "meshlb_members"
    }


def test_spec_names_are_the_ones_spec_md_lists() -> None:
    """The SPEC list above is SPEC.md's (read where shared/ sits beside the repo)."""
    spec = ROOT.parent / "shared" / "SPEC.md"
    if not spec.is_file():
        pytest.skip(f"no SPEC.md at {spec} (shared/ is laid beside the repository in CI)")
    text = spec.read_text(encoding="utf-8")
    for name in (*(f"{c}_total" for c in SPEC_COUNTERS), *SPEC_HISTOGRAMS, *SPEC_GAUGES):
        assert name in text, f"{name} is not in SPEC.md"


def exported_families() -> set[str]:
    """Family names the node's collector creates (read from its source)."""
    source = (ROOT / "meshlb" / "api" / "metrics.py").read_text(encoding="utf-8")
    return set(re.findall(r'"(meshlb_[a-z0-9_]+)"', source))


def check_names(expr: str, where: str) -> set[str]:
    names = metric_names(expr)
    assert names, f"{where}: no metric in {expr!r}"
    unknown = names - allowed_series()
    assert not unknown, f"{where}: {sorted(unknown)} are neither SPEC nor assumed names"
    not_exported = {
        n for n in names if n not in PROMETHEUS_SERIES and family_of(n) not in exported_families()
    }
    assert not not_exported, f"{where}: {sorted(not_exported)} not exported by the node"
    return names


def balanced(expr: str) -> bool:
    pairs, stack = {")": "(", "]": "[", "}": "{"}, []
    for ch in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
            return False
    return not stack


# ---- systemd -----------------------------------------------------------------------


def unit_entries(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of a unit file as lists of (key, value); keys may repeat."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        assert current is not None, f"entry outside a section: {line}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def unit_value(section: list[tuple[str, str]], key: str) -> str:
    values = [v for k, v in section if k == key]
    assert values, f"{key}= missing"
    return values[-1]


def seconds(text: str) -> float:
    """A systemd / Compose time span like `45`, `45s`, `1min 30s`, `1m30s`."""
    units = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}
    if re.fullmatch(r"\d+(\.\d+)?", text.strip()):
        return float(text)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]+)", text):
        total += float(number) * units[unit]
    assert total > 0, f"cannot read the time span {text!r}"
    return total


def test_unit_runs_the_venv_node_as_a_user_with_a_long_enough_stop() -> None:
    service = unit_entries(UNIT.read_text())["Service"]
    argv = shlex.split(unit_value(service, "ExecStart"))
    assert argv[0] == "/opt/meshlb/bin/meshlb" and argv[1] == "node"
    assert unit_value(service, "User") == "meshlb"
    assert unit_value(service, "KillSignal") == "SIGTERM"
    stop = seconds(unit_value(service, "TimeoutStopSec"))
    assert stop > DRAIN_TIMEOUT_S, f"TimeoutStopSec {stop} s kills the {DRAIN_TIMEOUT_S} s drain"
    env = dict(v.split("=", 1) for k, v in service if k == "Environment")
    assert env["MESHLB_DATA_DIR"] == "/var/lib/" + unit_value(service, "StateDirectory")
    assert unit_value(service, "RestartPreventExitStatus") == "2"  # bad config: no loop
    # The config file it names is a valid node config (the repository's example).
    config = argv[argv.index("--config") + 1]
    assert config == "/etc/meshlb/meshlb.yaml"
    load_settings(ROOT / "config" / "meshlb.yaml", {}, environ=env)


def test_systemd_readme_installs_what_the_unit_expects() -> None:
    readme = (DEPLOY / "systemd" / "README.md").read_text()
    assert "python3 -m venv /opt/meshlb" in readme
    assert "/opt/meshlb/bin/pip install" in readme
    assert re.search(r"useradd --system\b.*\bmeshlb\b", readme, re.S)
    for path in ("/etc/meshlb", "/var/lib/meshlb", "/etc/meshlb/meshlb.yaml"):
        assert path in readme
    rows = {
        (m.group(1), m.group(2))
        for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*(TCP|UDP)\s*\|", readme, re.M)
    }
    assert rows == {(str(HTTP_PORT), "TCP"), (str(GOSSIP_PORT), "UDP"), (str(GOSSIP_PORT), "TCP")}


def unit_with_stub_binary(tmp_path: Path) -> Path:
    """The unit, its ExecStart binary pointed at an executable stub under tmp_path
    (`verify` checks that the binary exists; /opt/meshlb is not installed here)."""
    stub = tmp_path / "opt" / "meshlb" / "bin" / "meshlb"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    unit = tmp_path / "meshlb.service"
    unit.write_text(UNIT.read_text().replace("/opt/meshlb/bin/meshlb", str(stub)))
    return unit


SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None,
    reason="systemd-analyze not installed (apt-get install -y --no-install-recommends systemd)",
)


@needs_systemd_analyze
def test_systemd_analyze_verify_is_clean(tmp_path: Path) -> None:
    unit = unit_with_stub_binary(tmp_path)
    run = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify only warns (exit 0) on an unknown key or a bad value: any output is a finding.
    assert run.returncode == 0 and not run.stdout.strip() and not run.stderr.strip(), (
        run.stdout + run.stderr
    )


@needs_systemd_analyze
def test_systemd_analyze_verify_catches_a_typo(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key is reported."""
    unit = unit_with_stub_binary(tmp_path)
    unit.write_text(unit.read_text().replace("TimeoutStopSec=", "TimeoutStopSek="))
    run = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert "TimeoutStopSek" in run.stderr


@needs_systemd_analyze
def test_systemd_hardening_exposure_stays_low(tmp_path: Path) -> None:
    unit = unit_with_stub_binary(tmp_path)
    run = subprocess.run(
        [str(SYSTEMD_ANALYZE), "security", "--offline=yes", "--threshold=20", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, f"exposure above 2.0:\n{run.stdout[-3000:]}{run.stderr}"


# ---- Dockerfile --------------------------------------------------------------------


def dockerfile_stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions (NAME, arguments) of each stage, continuation lines joined."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    stages: list[list[tuple[str, str]]] = [[]]
    for line in joined.splitlines():
        if not line.strip():
            continue
        name, _, args = line.strip().partition(" ")
        if name.upper() == "FROM":
            stages.append([])
        stages[-1].append((name.upper(), args.strip()))
    return stages[1:]


def final_stage() -> list[tuple[str, str]]:
    return dockerfile_stages(DOCKERFILE.read_text())[-1]


def instruction(stage: list[tuple[str, str]], name: str) -> str:
    found = [args for n, args in stage if n == name]
    assert found, f"no {name} in the final stage"
    return found[-1]


def docker_env(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for n, args in stage:
        if n == "ENV":
            for token in shlex.split(args):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def healthcheck_argv() -> tuple[list[str], list[str]]:
    """(options, CMD argv) of the final stage's HEALTHCHECK."""
    args = instruction(final_stage(), "HEALTHCHECK")
    options, sep, cmd = args.partition("CMD ")
    assert sep, "HEALTHCHECK without CMD"
    argv = json.loads(cmd)
    assert isinstance(argv, list), "HEALTHCHECK CMD should be an exec-form JSON array"
    return options.split(), argv


def test_dockerfile_exposes_the_node_default_ports() -> None:
    exposed = set(instruction(final_stage(), "EXPOSE").split())
    assert exposed == {f"{HTTP_PORT}/tcp", f"{GOSSIP_PORT}/udp", f"{GOSSIP_PORT}/tcp"}


def test_dockerfile_entrypoint_is_the_venv_node_as_a_non_root_user() -> None:
    stages = dockerfile_stages(DOCKERFILE.read_text())
    build = " ".join(args for stage in stages[:-1] for n, args in stage if n == "RUN")
    venv = re.search(r"python -m venv (\S+)", build)
    assert venv, "the build stage makes no venv"
    entrypoint = json.loads(instruction(final_stage(), "ENTRYPOINT"))
    assert entrypoint == [f"{venv.group(1)}/bin/meshlb", "node"]
    assert json.loads(instruction(final_stage(), "CMD")) == []
    user = instruction(final_stage(), "USER").split(":")[0]
    assert user not in ("root", "0")
    assert instruction(final_stage(), "STOPSIGNAL") == "SIGTERM"
    base = instruction(stages[-1], "FROM")
    arg = re.search(r"ARG PYTHON_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base == "${PYTHON_IMAGE}" and arg and "slim" in arg.group(1)
    # The data dir the image sets is the volume it declares, and a valid setting.
    env = docker_env(final_stage())
    assert json.loads(instruction(final_stage(), "VOLUME")) == [env["MESHLB_DATA_DIR"]]
    check_env_names(env, "Dockerfile")
    load_settings(None, {}, environ=env)


def test_dockerfile_healthcheck_probes_healthz_on_the_default_port() -> None:
    _, argv = healthcheck_argv()
    assert argv[0] == "python" and "curl" not in " ".join(argv)
    code = argv[-1]
    assert "/healthz" in code
    assert repr(NodeSettings.model_fields["http"].default) in code
    assert "MESHLB_HTTP" in code


def dockerignore_included(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""

    def regex(pattern: str) -> re.Pattern[str]:
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for raw in patterns:
        negate = raw.startswith("!")
        rx = regex(raw.lstrip("!").strip("/"))
        if any(rx.match(p) for p in prefixes):
            included = negate
    return included


def test_docker_context_holds_what_the_build_copies_and_nothing_else() -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.lstrip().startswith("#")
    ]
    sources = []
    for stage in dockerfile_stages(DOCKERFILE.read_text()):
        for n, args in stage:
            if n == "COPY" and not args.startswith("--from"):
                sources += shlex.split(args)[:-1]
    assert sources, "no COPY from the build context"
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
        assert dockerignore_included(src, patterns), f"COPY {src}: excluded by .dockerignore"
    # The package data the wheel must carry (the dashboard) reaches the build ...
    for asset in (ROOT / "meshlb" / "api" / "static").iterdir():
        assert dockerignore_included(str(asset.relative_to(ROOT)), patterns)
    # ... and the rest of the checkout does not.
    for other in ("tests/unit/test_config.py", ".git/HEAD", "deploy/k8s/statefulset.yaml"):
        assert not dockerignore_included(other, patterns), other
    assert not dockerignore_included("meshlb/__pycache__/cli.cpython-311.pyc", patterns)


def test_dockerignore_matcher_can_fail() -> None:
    assert not dockerignore_included("meshlb/x.py", ["*", "!pyproject.toml"])
    assert dockerignore_included("meshlb/x.py", ["*", "!meshlb/"])
    assert not dockerignore_included("a/b/__pycache__/c", ["**/__pycache__"])


@pytest.mark.integration
def test_image_entrypoint_and_healthcheck_work_against_a_real_node(tmp_path: Path) -> None:
    """The image's ENTRYPOINT (with this checkout's meshlb in place of the venv's)
    serves /healthz, its HEALTHCHECK command says healthy, and SIGTERM stops it with 0."""
    entrypoint = json.loads(instruction(final_stage(), "ENTRYPOINT"))
    meshlb = Path(sys.executable).with_name("meshlb")
    assert meshlb.exists(), f"no meshlb script beside {sys.executable}"
    _, health = healthcheck_argv()
    http, gossip = free_port(), free_gossip_port()
    image_env = {k: v for k, v in docker_env(final_stage()).items() if k != "PATH"}
    env = {
        **image_env,
        "MESHLB_HTTP": f"127.0.0.1:{http}",
        "MESHLB_GOSSIP": f"127.0.0.1:{gossip}",
        "MESHLB_OLLAMA": f"http://127.0.0.1:{free_port()}",  # nothing there: still live
        "MESHLB_DATA_DIR": str(tmp_path / "data"),
        "MESHLB_NODE_ID": "image-test",
    }
    probe_env = {**os.environ, **env}
    health = [sys.executable if health[0] == "python" else health[0], *health[1:]]
    with spawn([str(meshlb), *entrypoint[1:]], f"http://127.0.0.1:{http}", env=env) as node:
        ok = subprocess.run(health, env=probe_env, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr.decode()
        code = node.stop(timeout_s=DRAIN_TIMEOUT_S + 10)
        assert code == 0, node.log()
    down = subprocess.run(health, env=probe_env, capture_output=True, timeout=30)
    assert down.returncode != 0, "the healthcheck says healthy with no node running"


# ---- environment variables everywhere ---------------------------------------------


def check_env_names(env: dict[str, Any], where: str) -> None:
    """Every MESHLB_* variable names a node setting (a typo would be ignored silently)."""
    known = {f"MESHLB_{name.upper()}" for name in FIELD_NAMES}
    unknown = {k for k in env if k.startswith("MESHLB_")} - known
    assert not unknown, f"{where}: {sorted(unknown)} are not node settings"


def test_env_name_check_can_fail() -> None:
    with pytest.raises(AssertionError):
        check_env_names({"MESHLB_DATADIR": "/x"}, "test")


# ---- Compose -------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def compose_schema_validator() -> jsonschema.protocols.Validator:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def test_compose_file_matches_the_compose_schema() -> None:
    errors = sorted(compose_schema_validator().iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_misspelt_key() -> None:
    data = compose()
    data["services"]["meshlb-1"]["stop_grace_perod"] = "45s"
    assert list(compose_schema_validator().iter_errors(data))


def meshlb_services(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in data["services"].items() if name.startswith("meshlb-")}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with ${VAR:?...} / ${VAR:-x} filled as Compose would."""
    env = service.get("environment", {})
    assert isinstance(env, dict), "use the mapping form of environment:"

    def fill(value: object) -> str:
        text = str(value)
        text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)
        return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "a-cluster-key-of-32-characters..", text)

    return {k: fill(v) for k, v in env.items()}


def test_compose_runs_three_nodes_each_beside_its_own_ollama() -> None:
    data = compose()
    services = data["services"]
    nodes = meshlb_services(data)
    ollamas = {n for n, s in services.items() if str(s.get("image", "")).startswith("ollama/")}
    assert len(nodes) == 3 and len(ollamas) == 3
    used_ollamas, node_ids, host_ports = set(), set(), set()
    for name, service in nodes.items():
        env = compose_env(service)
        check_env_names(env, f"compose {name}")
        settings = load_settings(None, {}, environ=env)  # a valid configuration
        node_ids.add(settings.node_id)
        ollama_host = settings.ollama.removeprefix("http://").split(":")[0]
        assert ollama_host in ollamas and ollama_host in service["depends_on"]
        used_ollamas.add(ollama_host)
        assert settings.http_bind[1] == HTTP_PORT and settings.gossip_bind[1] == GOSSIP_PORT
        (mapping,) = service["ports"]
        host_port, container_port = str(mapping).split(":")
        assert int(container_port) == HTTP_PORT
        host_ports.add(host_port)
        assert settings.cluster_key, "the compose mesh should authenticate its gossip"
        assert seconds(service["stop_grace_period"]) > DRAIN_TIMEOUT_S
        assert service["build"]["dockerfile"] == "deploy/docker/Dockerfile"
        assert (COMPOSE.parent / service["build"]["context"]).resolve() == ROOT
        data_volume = [v for v in service["volumes"] if v.endswith(":" + str(settings.data_dir))]
        assert data_volume, f"{name}: --data-dir {settings.data_dir} is not on a volume"
    assert used_ollamas == ollamas and len(node_ids) == 3 and len(host_ports) == 3


def test_compose_nodes_join_the_first_one() -> None:
    nodes = meshlb_services(compose())
    first, *others = sorted(nodes)
    assert not compose_env(nodes[first]).get("MESHLB_JOIN")
    for name in others:
        settings = load_settings(None, {}, environ=compose_env(nodes[name]))
        assert settings.join == [f"{first}:{GOSSIP_PORT}"], name
        assert first in nodes[name]["depends_on"]


def test_compose_prometheus_scrapes_every_node_and_loads_the_alerts() -> None:
    data = compose()
    prom = data["services"]["prometheus"]
    config_path = config_mount(prom, "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load(config_path.read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "meshlb" and job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{n}:{HTTP_PORT}" for n in meshlb_services(data)}
    for rule_file in config["rule_files"]:
        assert config_mount(prom, rule_file) == ALERTS
    # The alerts select the same job the scrape config names.
    assert 'job="meshlb"' in ALERTS.read_text()


def config_mount(service: dict[str, Any], target: str) -> Path:
    """The host file a service mounts at `target` (a relative bind mount)."""
    for volume in service["volumes"]:
        src, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            path = (COMPOSE.parent / src).resolve()
            assert path.exists(), f"{src} mounted at {target} does not exist"
            return path
    raise AssertionError(f"nothing mounted at {target}")


def test_compose_grafana_provisions_the_dashboard_and_datasource() -> None:
    grafana = compose()["services"]["grafana"]
    provisioning = config_mount(grafana, "/etc/grafana/provisioning")
    dashboards_yaml = yaml.safe_load((provisioning / "dashboards" / "meshlb.yaml").read_text())
    (provider,) = dashboards_yaml["providers"]
    assert provider["type"] == "file"
    dash_dir = provider["options"]["path"]
    assert config_mount(grafana, f"{dash_dir}/meshlb.json") == DASHBOARD
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert sources["apiVersion"] == 1 and dashboards_yaml["apiVersion"] == 1


# ---- Kubernetes ------------------------------------------------------------------------


def k8s_docs() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def kind(kind_name: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_docs() if doc["kind"] == kind_name]


def k8s_version(version: str) -> str:
    import kubernetes_validate

    return kubernetes_validate.latest_version() if version == "latest" else version


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_manifests_match_the_strict_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate

    docs = list(k8s_docs())
    assert {d["kind"] for _, d in docs} >= {"StatefulSet", "Service", "Namespace"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, k8s_version(version), strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{name} {doc['kind']} against {version}: {path}: {e.message}")


def test_k8s_schema_rejects_a_misspelt_field() -> None:
    import kubernetes_validate

    (sts,) = kind("StatefulSet")
    sts["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 50
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, k8s_version("latest"), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    (image,) = kustomization["images"]
    (sts,) = kind("StatefulSet")
    meshlb = container(sts, "meshlb")
    assert meshlb["image"].split(":")[0] == image["name"]


@pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl not installed (only renders kustomization.yaml; the schema checks ran)",
)
def test_kubectl_kustomize_renders_valid_manifests() -> None:
    import kubernetes_validate

    run = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    rendered = [d for d in yaml.safe_load_all(run.stdout) if d]
    assert len(rendered) == len(list(k8s_docs()))
    for doc in rendered:
        kubernetes_validate.validate(doc, k8s_version("latest"), strict=True)


def container(sts: dict[str, Any], name: str) -> dict[str, Any]:
    spec = sts["spec"]["template"]["spec"]
    for c in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"no container {name}")


def named_ports(c: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {p["name"]: (p["containerPort"], p.get("protocol", "TCP")) for p in c["ports"]}


def k8s_env(c: dict[str, Any], pod_name: str = "meshlb-1") -> dict[str, str]:
    """The container's env, downward-API and Secret values filled with plausible ones."""
    field_values = {"metadata.name": pod_name, "status.podIP": "10.1.2.3"}
    env = {}
    for item in c["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "fieldRef" in item["valueFrom"]:
            env[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = "a-cluster-key-of-32-characters.."
    return env


def test_k8s_statefulset_probes_ports_and_graceful_leave() -> None:
    (sts,) = kind("StatefulSet")
    meshlb = container(sts, "meshlb")
    ports = named_ports(meshlb)
    assert ports["http"] == (HTTP_PORT, "TCP")
    assert sorted(v for k, v in ports.items() if k != "http") == [
        (GOSSIP_PORT, "TCP"),
        (GOSSIP_PORT, "UDP"),
    ]
    assert meshlb["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert meshlb["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    pre_stop = meshlb["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > float(pre_stop[1]) + DRAIN_TIMEOUT_S, "the pod is killed mid-drain"
    env = k8s_env(meshlb)
    check_env_names(env, "StatefulSet")
    settings = load_settings(None, {}, environ=env)
    assert settings.node_id == "meshlb-1" and settings.advertise == "10.1.2.3"
    assert settings.http_bind[1] == HTTP_PORT and settings.gossip_bind[1] == GOSSIP_PORT
    mounts = {m["mountPath"] for m in meshlb["volumeMounts"]}
    assert str(settings.data_dir) in mounts
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    data_mount = next(m for m in meshlb["volumeMounts"] if m["mountPath"] == str(settings.data_dir))
    assert data_mount["name"] in claims, "--data-dir must be on the pod's own volume"


def test_k8s_cluster_key_comes_from_a_secret() -> None:
    (sts,) = kind("StatefulSet")
    (item,) = [e for e in container(sts, "meshlb")["env"] if e["name"] == "MESHLB_CLUSTER_KEY"]
    ref = item["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"]
    assert not ref.get("optional", False)


def test_k8s_runs_as_the_image_user_and_ollama_outlives_the_node() -> None:
    (sts,) = kind("StatefulSet")
    meshlb = container(sts, "meshlb")
    uid = re.search(r"useradd[^&]*--uid (\d+)", DOCKERFILE.read_text())
    assert uid and meshlb["securityContext"]["runAsUser"] == int(uid.group(1))
    assert meshlb["securityContext"]["runAsNonRoot"] is True
    # Ollama is a native sidecar (stopped after the node), reached on localhost.
    ollama = container(sts, "ollama")
    assert ollama in [dict(c) for c in sts["spec"]["template"]["spec"]["initContainers"]]
    assert ollama["restartPolicy"] == "Always"
    ollama_env = {e["name"]: e["value"] for e in ollama["env"]}
    assert load_settings(None, {}, environ=k8s_env(meshlb)).ollama == (
        "http://" + ollama_env["OLLAMA_HOST"]
    )


def services() -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in kind("Service")}


def test_k8s_headless_and_client_services_select_the_pods() -> None:
    (sts,) = kind("StatefulSet")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = services()
    headless = svc[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # seeds resolve before ready
    ports = named_ports(container(sts, "meshlb"))
    for s in svc.values():
        assert s["spec"]["selector"].items() <= labels.items()
        for p in s["spec"]["ports"]:
            assert ports[p["targetPort"]] == (p["port"], p.get("protocol", "TCP"))
    clients = [s for s in svc.values() if s["spec"].get("clusterIP") != "None"]
    assert [p["port"] for c in clients for p in c["spec"]["ports"]] == [HTTP_PORT]


def seeds_for(pod: str) -> list[str]:
    """Run the StatefulSet's start script with `exec meshlb` replaced by an echo."""
    (sts,) = kind("StatefulSet")
    meshlb = container(sts, "meshlb")
    assert meshlb["command"] == ["/bin/sh", "-c"]
    script = meshlb["args"][0]
    entrypoint = " ".join(json.loads(instruction(final_stage(), "ENTRYPOINT")))
    assert script.rstrip().endswith(f"exec {entrypoint}"), "the script must exec the image's node"
    script = script.replace(f"exec {entrypoint}", 'printf "%s" "$MESHLB_JOIN"')
    run = subprocess.run(
        ["/bin/sh", "-c", script],
        env={**k8s_env(meshlb, pod), "PATH": os.environ.get("PATH", "")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    env = {**k8s_env(meshlb, pod), "MESHLB_JOIN": run.stdout}
    return load_settings(None, {}, environ=env).join


@pytest.mark.parametrize("ordinal", [0, 1, 2, 5])
def test_k8s_pods_join_the_others_by_their_headless_dns_names(ordinal: int) -> None:
    (sts,) = kind("StatefulSet")
    name, headless = sts["metadata"]["name"], sts["spec"]["serviceName"]
    pod = f"{name}-{ordinal}"
    seeds = seeds_for(pod)
    expected = [f"{name}-{i}.{headless}:{GOSSIP_PORT}" for i in range(3) if i != ordinal]
    assert seeds == expected
    assert not any(s.startswith(f"{pod}.") for s in seeds), "a pod must not seed itself"


# ---- Grafana ---------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def dashboard_targets(data: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for panel in data["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner["title"], target


def test_grafana_dashboard_structure() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and data["schemaVersion"] >= 36
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in data["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"panel {panel['title']!r} has no query"
    for title, target in dashboard_targets(data):
        assert target["datasource"]["uid"] == "${datasource}", title
        used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval"}
        assert used <= set(variables), f"{title}: undefined variables {used - set(variables)}"


def test_grafana_queries_use_only_spec_metric_names() -> None:
    data = dashboard()
    seen: set[str] = set()
    for title, target in dashboard_targets(data):
        assert balanced(target["expr"]), f"{title}: unbalanced {target['expr']!r}"
        seen |= {family_of(n) for n in check_names(target["expr"], f"panel {title!r}")}
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            names = re.findall(r"label_values\((\w+)", variable["definition"])
            assert names and set(names) <= allowed_series(), variable["name"]
    # Every SPEC family (and the assumed gauges) has a panel.
    missing = {*SPEC_COUNTERS, *SPEC_HISTOGRAMS, *SPEC_GAUGES, *ASSUMED_GAUGES} - seen
    assert not missing, f"no panel shows {sorted(missing)}"


def test_metric_name_check_can_fail() -> None:
    with pytest.raises(AssertionError):
        check_names("rate(meshlb_request_total[5m])", "test")  # 'requests' misspelt
    with pytest.raises(AssertionError):
        check_names("meshlb_queue_depth_total", "test")  # a gauge scraped as a counter


# ---- Prometheus alerts -----------------------------------------------------------------

DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text())
    assert set(data) == {"groups"} and data["groups"]
    rules = []
    names = [g["name"] for g in data["groups"]]
    assert len(names) == len(set(names)), "group names repeat"
    for group in data["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}, group["name"]
        rules += group["rules"]
    return rules


def test_alert_rules_are_well_formed() -> None:
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
        assert isinstance(rule["expr"], str) and balanced(rule["expr"]), rule["alert"]
        assert DURATION.match(str(rule["for"])), rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
        for text in rule["annotations"].values():
            for label in re.findall(r"\$labels\.(\w+)", text):
                assert label in rule["expr"] or label in ("instance", "node", "job"), label
        check_names(rule["expr"], f"alert {rule['alert']}")


def test_alerts_cover_what_an_operator_is_paged_for() -> None:
    by_metric: dict[str, list[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            by_metric.setdefault(name, []).append(rule["expr"])
    assert any("== 0" in e for e in by_metric["up"])  # a node process down
    assert any("== 0" in e for e in by_metric["meshlb_ollama_up"])  # Ollama unreachable
    assert any("== 0" in e for e in by_metric["meshlb_quorum"])  # quorum lost
    queue = by_metric["meshlb_queue_depth"]
    assert any("meshlb_queue_max" in e and "0.8" in e for e in queue)  # queue over 80 %
    assert any('state="dead"' in e for e in by_metric["meshlb_members"])  # members dead


PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (apt-get install -y --no-install-recommends prometheus)",
)


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    run = subprocess.run(
        [str(PROMTOOL), "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr


@needs_promtool
def test_promtool_unit_tests_fire_each_alert() -> None:
    """tests/fixtures/alerts_test.yml: each alert fires on a bad series, not on a good one."""
    run = subprocess.run(
        [str(PROMTOOL), "test", "rules", "alerts_test.yml"],
        cwd=FIXTURES,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    tested = set(re.findall(r"alertname: (\w+)", (FIXTURES / "alerts_test.yml").read_text()))
    assert tested == {r["alert"] for r in alert_rules()}, "an alert without a promtool test"


@needs_promtool
def test_promtool_checks_the_compose_prometheus_config(tmp_path: Path) -> None:
    source = COMPOSE.parent / "prometheus.yml"
    config = yaml.safe_load(source.read_text())
    config["rule_files"] = [str(ALERTS)]  # the container path, as the host sees it
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    run = subprocess.run(
        [str(PROMTOOL), "check", "config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
