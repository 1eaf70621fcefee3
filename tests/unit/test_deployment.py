"""Dockerfile, .dockerignore and compose.yaml: linted, and in agreement with the
Procfile and with each other. No Docker engine is needed (nor run)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from runner.cli import cli
from tests.support.deployment import (
    REPO,
    build_context,
    compose,
    dockerfile_stages,
    dockerignore,
    excluded,
    procfile,
    prometheus_config,
)

BIN = Path(sys.executable).parent

# The stage that becomes the image.
final = dockerfile_stages()[-1]


def image_command(service: dict[str, object]) -> list[str]:
    """The command that a compose service of the runner's image runs."""
    entrypoint = service.get("entrypoint", list(final.last("ENTRYPOINT").value))
    command = service.get("command", list(final.last("CMD").value))
    assert isinstance(entrypoint, list) and isinstance(command, list)
    return [*entrypoint, *command]


def runner_services() -> dict[str, dict[str, object]]:
    """The compose services built from this repository."""
    services = compose()["services"]
    return {name: s for name, s in services.items() if s.get("build") == "."}


def service_running(process: str) -> str:
    """The name of the compose service that runs this process of the Procfile."""
    [name] = [
        name
        for name, service in runner_services().items()
        if image_command(service) == procfile()[process]
    ]
    return name


def test_the_image_runs_the_worker_of_the_procfile():
    assert final.last("ENTRYPOINT").json and final.last("CMD").json
    image_default = [*final.last("ENTRYPOINT").value, *final.last("CMD").value]
    assert image_default == procfile()["worker"]


def test_compose_runs_the_release_step_then_the_worker():
    commands = [image_command(s) for s in runner_services().values()]
    assert sorted(commands) == sorted(procfile().values())
    release, worker = service_running("release"), service_running("worker")
    services = compose()["services"]

    assert services[worker]["depends_on"] == {
        release: {"condition": "service_completed_successfully"}
    }
    [(database, condition)] = services[release]["depends_on"].items()
    assert condition == {"condition": "service_healthy"}
    assert "pg_isready" in services[database]["healthcheck"]["test"]
    assert services[release].get("restart", "no") == "no"


def test_the_runners_use_the_compose_database():
    services = compose()["services"]
    for name, service in runner_services().items():
        url = urlsplit(service["environment"]["DATABASE_URL"])
        database = services[url.hostname]
        env = database["environment"]
        assert (url.username, url.password, url.path) == (
            env["POSTGRES_USER"],
            env["POSTGRES_PASSWORD"],
            "/" + env["POSTGRES_DB"],
        ), name


def test_compose_waits_for_the_current_job_on_stop():
    [grace] = [
        p.default for p in cli.commands["run"].params if p.name == "shutdown_grace"
    ]
    period = compose()["services"][service_running("worker")]["stop_grace_period"]
    assert period.endswith("s") and float(period[:-1]) > grace


def test_the_image_serves_metrics_to_other_containers():
    env = final.env()
    assert env["RUNNER_METRICS_HOST"] == "0.0.0.0"
    assert final.last("EXPOSE").value == (env["RUNNER_METRICS_PORT"],)
    [job] = prometheus_config()["scrape_configs"]
    [discovery] = job["dns_sd_configs"]
    assert str(discovery["port"]) == env["RUNNER_METRICS_PORT"]
    assert discovery["names"] == [service_running("worker")]


def test_the_image_runs_as_a_user_that_is_not_root():
    user = final.last("USER").value[0]
    assert user not in ("root", "0") and not user.startswith("0:")


@pytest.fixture
def health_server() -> Iterator[tuple[int, dict[str, int]]]:
    """A stand-in for the runner's metrics server: port, and status by path."""
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(statuses.get(self.path, 404))
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], statuses
    server.shutdown()
    server.server_close()


def run_healthcheck(port: int) -> int:
    """Run the image's HEALTHCHECK command here, as Docker would in the container."""
    check = final.last("HEALTHCHECK")
    assert check.json, "exec form: the image may have no shell"
    kind, program, *args = check.value
    assert (kind, program) == ("CMD", "python")
    env = {
        **final.env(),
        "PATH": str(BIN),
        "RUNNER_METRICS_PORT": str(port),
        # A proxy that the check must not use: nothing listens there.
        "http_proxy": "http://127.0.0.1:9",
    }
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, timeout=30
    ).returncode


def test_the_healthcheck_asks_the_runner_for_healthz(health_server):
    port, statuses = health_server
    statuses["/healthz"] = 200
    assert run_healthcheck(port) == 0
    statuses["/healthz"] = 503
    assert run_healthcheck(port) == 1
    del statuses["/healthz"]
    assert run_healthcheck(port) == 1


def test_the_healthcheck_fails_when_nothing_listens():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    assert run_healthcheck(port) == 1


def test_the_build_context_holds_the_package_and_nothing_else():
    patterns = dockerignore()
    context = {str(path) for path in build_context(patterns)}
    assert {"pyproject.toml", "README.md", "runner/sql/schema.sql"} <= context
    for path in [".git/config", ".venv/bin/python", "tests/conftest.py"]:
        assert excluded(PurePosixPath(path), patterns), path
    assert not any("__pycache__" in path for path in context)


def copied_to(name: str, source: str, target: str) -> Path:
    """Where `COPY source target` puts the file `name`, relative to the WORKDIR.

    A file goes into a target ending with / or becomes the target; a folder's
    content goes into the target.
    """
    if name != source:
        return Path(target, Path(name).relative_to(source))
    return Path(target, Path(name).name) if target.endswith("/") else Path(target)


def test_the_build_stage_builds_the_package(tmp_path):
    """Replay the build stage's COPY instructions, then build the wheel it installs."""
    context = {str(p) for p in build_context(dockerignore())}
    [build] = [stage for stage in dockerfile_stages() if stage.name == "build"]
    workdir = tmp_path / build.last("WORKDIR").value[0].lstrip("/")
    for copy in build.all("COPY"):
        *sources, target = copy.value
        for source in sources:
            files = [c for c in context if c == source or c.startswith(source + "/")]
            assert files, f"COPY {source}: not in the build context"
            for name in files:
                dest = workdir / copied_to(name, source, target)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes((REPO / name).read_bytes())
    wheels = tmp_path / "wheels"
    tool(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", wheels, workdir)
    [wheel] = wheels.glob("runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "runner/sql/schema.sql",
        "runner/sql/queries.sql",
        "handlers/sql/api_keys.sql",
        "runner/py.typed",
    } <= names


def test_hadolint_finds_nothing():
    tool(BIN / "hadolint", "--no-color", REPO / "Dockerfile")


def test_compose_follows_the_compose_specification():
    schema = "vendor.compose-spec"
    tool(BIN / "check-jsonschema", "--builtin-schema", schema, REPO / "compose.yaml")


def tool(*args: str | Path) -> None:
    """Run a checker; fail with what it printed unless it succeeds."""
    done = subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
