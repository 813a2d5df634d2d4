"""Open TensorBoard on a run's event files: a local run/stage directory or an ``s3://`` prefix.

Every training stage writes TensorBoard events to ``<stage>/tb``; a ``rightsizer run --output DIR``
keeps them under ``DIR/stages``. KFP v2 has no TensorBoard viewer of its own, so on a cluster the
events live in the object store: an ``s3://`` target is synced (only new or changed objects, each
verified) into a local cache that TensorBoard reads, and re-synced every ``sync_interval`` seconds
while it runs. The same command serves the in-cluster TensorBoard Deployment in ``k8s/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from rightsizer.errors import UserError
from rightsizer.storage import Store, is_uri, parse_uri

EVENT_GLOB = "events.out.tfevents.*"
_URL_LINE = re.compile(r"TensorBoard [^ ]+ at (http://[^ ]+/) ")


def default_cache(uri: str) -> Path:
    base = Path(os.environ.get("RIGHTSIZER_CACHE", Path.home() / ".cache" / "rightsizer"))
    ref = parse_uri(uri)
    return base / "tensorboard" / f"{ref.bucket}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def is_event_file(key: str) -> bool:
    return key.rsplit("/", 1)[-1].startswith("events.out.tfevents.")


def sync_events(store: Store, uri: str, cache: Path, allow_empty: bool = False) -> int:
    """Fetch the new or changed event files under ``uri`` (models and data next to them are skipped)."""
    try:
        return store.sync_dir(uri, cache, match=is_event_file)
    except UserError as exc:
        if allow_empty and "no such object or prefix" in str(exc):
            cache.mkdir(parents=True, exist_ok=True)
            return 0
        raise


def resolve_logdir(target: str, cache_dir: str | Path | None = None, store: Store | None = None,
                   allow_empty: bool = False) -> Path:
    """The local directory TensorBoard should read: ``target`` itself, or a synced cache of an s3 prefix.

    ``allow_empty`` (for the in-cluster Deployment) serves a prefix that has no events yet instead
    of refusing it; they show up with the next sync.
    """
    if is_uri(target):
        parse_uri(target)
        cache = Path(cache_dir) if cache_dir else default_cache(target)
        sync_events(store or Store.from_env(), target, cache, allow_empty)
        logdir = cache
    else:
        logdir = Path(target).expanduser()
        if not logdir.exists():
            raise UserError(f"'{target}' not found; give a run directory (rightsizer run --output DIR), a stage "
                            "directory or an s3://bucket/prefix")
        if not logdir.is_dir():
            raise UserError(f"'{target}' is a file; give the directory that holds the tb/ event files")
    if not allow_empty and not any(logdir.rglob(EVENT_GLOB)):
        raise UserError(f"no TensorBoard event files under '{target}'; training stages write them to <stage>/tb")
    return logdir


class TensorBoardServer:
    """The real ``tensorboard`` in a subprocess; ``port=0`` lets it pick a free port."""

    def __init__(self, logdir: str | Path, host: str = "127.0.0.1", port: int = 6006, reload_interval_s: int = 5):
        self.logdir = Path(logdir)
        self.host = host
        self.port = port
        self.reload_interval_s = reload_interval_s
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self.output: list[str] = []
        self._ready = threading.Event()

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.rstrip())
            match = _URL_LINE.search(line)
            if match and not self._ready.is_set():
                self.url = match.group(1).rstrip("/")
                self._ready.set()
        self._ready.set()  # the process ended

    def start(self, timeout_s: float = 60.0) -> str:
        command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir), "--host", self.host,
                   "--port", str(self.port), "--reload_interval", str(self.reload_interval_s)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        threading.Thread(target=self._read, daemon=True, name="tensorboard-output").start()
        if not self._ready.wait(timeout_s) or self.url is None:
            tail = " | ".join(line for line in self.output[-3:] if line.strip())
            self.stop()
            if "address already in use" in tail.lower() or "could not bind" in tail.lower():
                raise UserError(f"port {self.port} on {self.host} is taken; pick another with --port")
            raise UserError(f"TensorBoard did not start within {timeout_s:.0f} s: {tail or 'no output'}")
        return self.url

    def get_json(self, path: str, timeout_s: float = 10.0):
        with urllib.request.urlopen(f"{self.url}{path}", timeout=timeout_s) as response:  # noqa: S310 - loopback
            return json.loads(response.read())

    def scalar_tags(self) -> dict[str, list[str]]:
        """run -> scalar tags, from TensorBoard's own HTTP API."""
        return {run: sorted(tags) for run, tags in self.get_json("/data/plugin/scalars/tags").items()}

    def wait_for_tag(self, pattern: str, timeout_s: float = 60.0) -> tuple[str, str]:
        """Poll until some run has a scalar tag matching ``pattern``; return (run, tag)."""
        deadline = time.monotonic() + timeout_s
        wanted = re.compile(pattern)
        while True:
            try:
                for run, tags in self.scalar_tags().items():
                    for tag in tags:
                        if wanted.search(tag):
                            return run, tag
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no scalar tag matching {pattern!r} after {timeout_s:.0f} s")
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"TensorBoard exited: {' | '.join(self.output[-3:])}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def __enter__(self) -> "TensorBoardServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(target: str, host: str = "127.0.0.1", port: int = 6006, cache_dir: str | Path | None = None,
          sync_interval_s: float = 60.0, allow_empty: bool = False, announce=print) -> int:
    """Serve ``target`` until TensorBoard exits or Ctrl-C; re-sync an s3 target every ``sync_interval_s``.

    A failed re-sync (store briefly down) is reported and retried at the next interval; TensorBoard
    keeps serving what it has.
    """
    store = Store.from_env() if is_uri(target) else None
    logdir = resolve_logdir(target, cache_dir, store, allow_empty)
    server = TensorBoardServer(logdir, host=host, port=port)
    try:
        url = server.start()
        announce(f"TensorBoard on {target} at {url}" + (f" (synced to {logdir})" if store else ""))
        while True:
            try:
                return server.process.wait(timeout=sync_interval_s if store and sync_interval_s > 0 else None)
            except subprocess.TimeoutExpired:
                try:
                    fetched = sync_events(store, target, logdir, allow_empty)
                except UserError as exc:
                    announce(f"sync failed, retrying in {sync_interval_s:.0f} s: {exc}")
                    continue
                if fetched:
                    announce(f"synced {fetched} new or changed event file(s) from {target}")
    finally:
        server.stop()
