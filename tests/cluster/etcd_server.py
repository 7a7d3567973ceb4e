"""A real etcd server for tests: loopback only, a temporary data dir, free ports."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import trio

ETCD = shutil.which("etcd")


@dataclasses.dataclass
class ServerTls:
    """Files of a TLS etcd: its certificate and key, and the CA it trusts for clients
    (which also signed its certificate); ``client_cert`` / ``client_key`` for tests."""

    ca: Path
    cert: Path
    key: Path
    client_cert: Path
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EtcdServer:
    """One etcd process; ``start`` / ``stop`` (sync, for fixtures) and ``astart`` /
    ``astop`` (for tests that take etcd away while trio code runs). The ports stay
    the same across restarts so clients reconnect to the same URL."""

    def __init__(self, root: Path, tls: ServerTls | None = None, name: str = "test") -> None:
        assert ETCD is not None
        self.root = root
        self.tls = tls
        self.name = name
        self.data_dir = root / f"etcd-data-{name}"
        self.client_port = free_port()
        self.peer_port = free_port()
        self.peer_url = f"http://127.0.0.1:{self.peer_port}"
        self.initial_cluster = f"{name}={self.peer_url}"
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.client_port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = root / f"etcd-{name}.log"

    def _spawn(self) -> None:
        assert self.process is None, "etcd is running already"
        peer = self.peer_url
        env = {key: value for key, value in os.environ.items() if not key.startswith("ETCD")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(ETCD),
                    f"--name={self.name}",
                    f"--data-dir={self.data_dir}",
                    f"--listen-client-urls={self.url}",
                    f"--advertise-client-urls={self.url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster={self.initial_cluster}",
                    "--initial-cluster-token=spear-tests",
                    "--heartbeat-interval=50",
                    "--election-timeout=500",
                    "--logger=zap",
                    "--log-level=warn",
                    *self._tls_flags(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _tls_flags(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--cert-file={self.tls.cert}",
            f"--key-file={self.tls.key}",
            f"--trusted-ca-file={self.tls.ca}",
            "--client-cert-auth",
        ]

    def _healthy(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"etcd exited with {self.process.returncode}; log: {self.log_path.read_text()[-2000:]}")
        try:
            answer = httpx.get(
                f"{self.url}/health", timeout=0.5, verify=self.tls.client_context() if self.tls else True
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200 and answer.json().get("health") == "true"

    def start(self, timeout_s: float = 20.0) -> None:
        self._spawn()
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"etcd not healthy within {timeout_s}s; log: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    async def astart(self, timeout_s: float = 20.0) -> None:
        self._spawn()
        with trio.fail_after(timeout_s):
            while not await trio.to_thread.run_sync(self._healthy):
                await trio.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    async def astop(self) -> None:
        await trio.to_thread.run_sync(self.stop)

    def wipe(self) -> None:
        """Forget everything (a brand-new etcd at the same address on next start)."""
        assert self.process is None
        shutil.rmtree(self.data_dir, ignore_errors=True)


class EtcdCluster:
    """Several etcd members forming one cluster (started together: each waits for a
    quorum before it is healthy)."""

    def __init__(self, root: Path, size: int) -> None:
        self.members = [EtcdServer(root, name=f"m{i}") for i in range(size)]
        initial = ",".join(member.initial_cluster for member in self.members)
        for member in self.members:
            member.initial_cluster = initial

    @property
    def urls(self) -> list[str]:
        return [member.url for member in self.members]

    def start(self) -> None:
        try:
            for member in self.members:
                member._spawn()
            for member in self.members:
                member.wait_healthy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for member in self.members:
            member.stop()
