"""The container recipe: Dockerfile and docker-compose.yml.

No Docker engine runs here, so the image is not built; instead the recipe's shape is checked and
its own commands are run for real: collectstatic as the build step runs it, the CMD's gunicorn
serving the app, and the HEALTHCHECK command probing it with a production ALLOWED_HOSTS.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def instruction(name: str) -> str:
    """The (continuation-joined) text of the last ``name`` instruction of the runtime stage."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    found = [line for line in joined.splitlines() if line.startswith(f"{name} ")]
    assert found, f"no {name} in the Dockerfile"
    return found[-1][len(name) + 1:]


def shell_command(text: str) -> str:
    """A CMD in exec form ``["sh", "-c", "…"]`` or shell form, as the shell command it runs."""
    exec_form = re.fullmatch(r'\["sh", "-c", "(.*)"\]', text.strip())
    return exec_form.group(1) if exec_form else text


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class TestDockerfile:
    def test_it_builds_in_two_stages_on_a_slim_python(self):
        stages = re.findall(r"^FROM (\S+) AS (\w+)", DOCKERFILE, re.M)
        assert len(stages) == 2 and all(image.startswith("python:3.11-slim") for image, _ in stages)
        assert "COPY --from=build" in DOCKERFILE

    def test_it_runs_as_a_non_root_user(self):
        assert instruction("USER") not in ("root", "0")

    def test_it_collects_static_files_and_serves_with_gunicorn_and_has_a_healthcheck(self):
        assert "collectstatic --noinput" in instruction("RUN")
        assert "gunicorn marketdata_site.wsgi:application" in instruction("CMD")
        assert "/healthz" in instruction("HEALTHCHECK")

    def test_its_collectstatic_step_works_with_debug_off(self, tmp_path):
        env = {**os.environ, "SECRET_KEY": "collectstatic-only", "DEBUG": "false", "STATIC_ROOT": str(tmp_path)}
        proc = subprocess.run([sys.executable, "manage.py", "collectstatic", "--noinput"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "admin").is_dir()

    def test_its_healthcheck_passes_against_its_gunicorn_with_a_production_allowed_hosts(self, tmp_path):
        port = free_port()
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PORT": str(port),
               "SECRET_KEY": "a-real-production-key", "DEBUG": "false", "ALLOWED_HOSTS": "md.example.com",
               "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "WEB_CONCURRENCY": "1"}
        cmd = shell_command(instruction("CMD")).replace("0.0.0.0:", "127.0.0.1:")
        server = subprocess.Popen(["sh", "-c", f"exec {cmd}"], cwd=ROOT, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                assert server.poll() is None, "gunicorn exited"
                assert time.monotonic() < deadline, "gunicorn never listened"
                time.sleep(0.1)
            # The master listens before its worker has loaded the app: wait for a first answer.
            ready = urllib.request.Request(f"http://127.0.0.1:{port}/healthz", headers={"Host": "md.example.com"})
            assert urllib.request.urlopen(ready, timeout=60).status == 200
            check = shell_command(instruction("HEALTHCHECK").split(" CMD ", 1)[1])
            probe = subprocess.run(["sh", "-c", check], cwd=ROOT, env=env, capture_output=True, text=True,
                                   timeout=30)
            assert probe.returncode == 0, probe.stderr
            # The same probe with a Host the app does not serve is refused: the Host header matters.
            bad = subprocess.run(["sh", "-c", check], cwd=ROOT, env={**env, "ALLOWED_HOSTS": "other.example"},
                                 capture_output=True, text=True, timeout=30)
            assert bad.returncode != 0
        finally:
            server.terminate()
            server.wait(timeout=30)


class TestCompose:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())

    def test_it_has_postgres_web_and_a_qcluster_worker(self):
        services = self.compose["services"]
        assert services["db"]["image"].startswith("postgres:")
        assert "web" in services and "ports" in services["web"]
        assert services["worker"]["command"] == ["python", "manage.py", "qcluster"]

    def test_the_app_services_use_postgresql_and_require_a_secret_key(self):
        for name in ("web", "worker", "migrate"):
            env = self.compose["services"][name]["environment"]
            assert env["DATABASE_URL"].startswith("postgres://") and "@db:5432/" in env["DATABASE_URL"]
            assert env["SECRET_KEY"].startswith("${SECRET_KEY:?")
            assert env["DEBUG"] == "false"

    def test_the_https_and_throttle_settings_are_passed_through_from_the_environment(self):
        env = self.compose["x-app"]["environment"]
        for name in ("SECURE_PROXY_SSL_HEADER", "SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS",
                     "SECURE_HSTS_INCLUDE_SUBDOMAINS", "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE",
                     "CSRF_COOKIE_SECURE", "CSRF_TRUSTED_ORIGINS", "API_THROTTLE_ANON", "API_THROTTLE_FAILED_AUTH",
                     "API_NUM_PROXIES"):
            assert str(env[name]).startswith(f"${{{name}:-"), name
        for name in ("web", "worker", "migrate"):
            assert self.compose["services"][name]["environment"]["SECURE_SSL_REDIRECT"] == env["SECURE_SSL_REDIRECT"]

    def test_web_and_worker_start_after_migrations(self):
        for name in ("web", "worker"):
            depends = self.compose["services"][name]["depends_on"]
            assert depends["migrate"]["condition"] == "service_completed_successfully"


class TestStaticFiles:
    def test_collected_static_files_are_served_with_debug_off(self, settings, tmp_path):
        from django.core.management import call_command
        from django.test import Client

        settings.DEBUG = False
        settings.STATIC_ROOT = tmp_path
        call_command("collectstatic", "--noinput", verbosity=0)

        # A new client builds its middleware now, so WhiteNoise indexes the new STATIC_ROOT.
        response = Client().get("/static/admin/css/base.css")

        assert response.status_code == 200
        assert b"".join(response.streaming_content).strip()
