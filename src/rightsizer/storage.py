"""S3 / MinIO object storage: ``s3://bucket/key`` URIs, uploads and downloads that survive a flaky network.

Inside KFP, artifacts move through KFP's own object store and this module is not involved. It is
for what KFP does not carry: a ``data.source`` that lives in a bucket, and the inputs and outputs of
pods started outside KFP (the nodes of a multi-node TrainJob), which read and write stage
directories by URI.

Where things come from:

* endpoint, TLS and region: ``config.storage`` when given, else the environment
  (``AWS_ENDPOINT_URL``, or TensorBoard's ``S3_ENDPOINT``; ``AWS_REGION``/``AWS_DEFAULT_REGION``).
  ``http://host:port`` means no TLS; ``https://host`` or a bare ``host[:port]`` means TLS.
* credentials: **only** the environment (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optional
  ``AWS_SESSION_TOKEN``). On a cluster these come from a k8s Secret mounted as env (see
  :func:`rightsizer.pipeline.apply_resources`); never from a config file or a pipeline parameter.

Guarantees: every upload stores the file's sha256 as object metadata and every download checks
it (falling back to the MD5 ETag for objects uploaded by other tools); downloads go to a temporary
name and are renamed into place, so a failure leaves nothing half-written; connection errors and
5xx answers are retried with exponential backoff a bounded number of times; a missing bucket or
object, refused credentials or an unreachable endpoint each become a one-line :class:`UserError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rightsizer.errors import UserError
from rightsizer.outputs import process_rank

if TYPE_CHECKING:
    from rightsizer.config import StorageConfig

SCHEMES = ("s3://", "minio://")
ENDPOINT_ENV = "AWS_ENDPOINT_URL"
TENSORBOARD_ENDPOINT_ENV = "S3_ENDPOINT"
REGION_ENVS = ("AWS_REGION", "AWS_DEFAULT_REGION")
ACCESS_KEY_ENV = "AWS_ACCESS_KEY_ID"
SECRET_KEY_ENV = "AWS_SECRET_ACCESS_KEY"
SESSION_TOKEN_ENV = "AWS_SESSION_TOKEN"
RETRIES_ENV = "RIGHTSIZER_S3_RETRIES"
BACKOFF_ENV = "RIGHTSIZER_S3_BACKOFF_S"
SECRET_KEYS_TO_ENV = {"accesskey": ACCESS_KEY_ENV, "secretkey": SECRET_KEY_ENV}  # KFP's mlpipeline-minio-artifact keys
BUCKET_ENV = "RIGHTSIZER_S3_BUCKET"
PREFIX_ENV = "RIGHTSIZER_S3_PREFIX"
# the rightsizer-storage ConfigMap (k8s/overlays/*) -> env in every task and TrainJob node (optional keys)
STORAGE_CONFIG_MAP = "rightsizer-storage"
CONFIG_MAP_KEYS_TO_ENV = {"endpoint": ENDPOINT_ENV, "bucket": BUCKET_ENV, "prefix": PREFIX_ENV}
DEFAULT_BUCKET = "rightsizer"
DEFAULT_PREFIX = "runs"
HF_TOKEN_ENV = "HF_TOKEN"
HF_TOKEN_KEY = "token"  # the key in the Secret named by hf_token_secret
SHA256_META = "sha256"
DEFAULT_ENDPOINT = "https://s3.amazonaws.com"
DEFAULT_RETRIES = 4
DEFAULT_BACKOFF_S = 1.0
SUMMARY_LAST = "summary.json"  # written last on upload: its presence marks a complete stage output
SYNC_MANIFEST = ".rightsizer-sync.json"
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TRANSIENT_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "InvalidToken", "ExpiredToken",
                     "InvalidSecurity", "AuthorizationHeaderMalformed"}
_MISSING_KEY_CODES = {"NoSuchKey", "ResourceNotFound", "NoSuchObject"}
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# URIs


@dataclass(frozen=True)
class ObjectRef:
    """A parsed ``s3://bucket/key`` (``key`` may be empty or end in '/', meaning a prefix)."""

    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def prefix(self) -> str:
        """The key as a directory prefix ('' for the bucket root, else ending in '/')."""
        return self.key if not self.key or self.key.endswith("/") else self.key + "/"

    def child(self, relative: str) -> "ObjectRef":
        return ObjectRef(self.bucket, self.prefix + relative.lstrip("/"))


def is_uri(value: str | os.PathLike | None) -> bool:
    return isinstance(value, str) and value.startswith(SCHEMES)


def parse_uri(uri: str) -> ObjectRef:
    """Parse ``s3://bucket/key`` or ``minio://bucket/key``; a malformed URI is a UserError."""
    text = str(uri).strip()
    scheme = next((s for s in SCHEMES if text.startswith(s)), None)
    if scheme is None:
        raise UserError(f"'{uri}' is not an object-store URI; write s3://bucket/path/to/key (or minio://...)")
    rest = text[len(scheme):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise UserError(f"'{uri}' has no bucket; write s3://bucket/path/to/key")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise UserError(f"'{uri}': '{bucket}' is not a valid bucket name (3-63 characters: lowercase letters, "
                        "digits, '.', '-')")
    if "//" in key or any(part in (".", "..") for part in key.split("/")):
        raise UserError(f"'{uri}': the key must not contain '//', '.' or '..' segments")
    return ObjectRef(bucket, key)


def join_uri(base: str, *parts: str) -> str:
    """``join_uri("s3://b/runs", "demo", "teacher")`` -> ``s3://b/runs/demo/teacher``."""
    ref = parse_uri(base)
    key = "/".join(p.strip("/") for p in (ref.key, *parts) if p and p.strip("/"))
    return f"s3://{ref.bucket}/{key}"


def bucket_for(storage: "StorageConfig | None") -> str:
    """``storage.bucket``, else ``$RIGHTSIZER_S3_BUCKET`` (the rightsizer-storage ConfigMap on a cluster), else 'rightsizer'."""
    return getattr(storage, "bucket", None) or os.environ.get(BUCKET_ENV, "").strip() or DEFAULT_BUCKET


def prefix_for(storage: "StorageConfig | None") -> str:
    """``storage.prefix``, else ``$RIGHTSIZER_S3_PREFIX`` (the ConfigMap), else 'runs'."""
    return (getattr(storage, "prefix", None) or os.environ.get(PREFIX_ENV, "").strip() or DEFAULT_PREFIX).strip("/")


def artifact_uri(storage: "StorageConfig | None", *parts: str) -> str:
    """Where run artifacts for ``parts`` live: ``s3://<bucket>/<prefix>/<parts...>``."""
    return join_uri(f"s3://{bucket_for(storage)}/{prefix_for(storage)}", *parts)


# ---------------------------------------------------------------------------------------------
# settings (endpoint, TLS, region, retries) and credentials


@dataclass(frozen=True)
class Settings:
    endpoint: str  # host[:port], as the minio client wants it
    secure: bool
    region: str | None = None
    retries: int = DEFAULT_RETRIES
    backoff_s: float = DEFAULT_BACKOFF_S
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"


def split_endpoint(endpoint: str, secure: bool | None = None) -> tuple[str, bool]:
    """``http://h:9000`` -> ('h:9000', False); ``https://h`` or ``h`` -> ('h', True) unless ``secure`` says."""
    text = endpoint.strip().rstrip("/")
    match = re.fullmatch(r"(?:(https?)://)?([A-Za-z0-9.\-\[\]:]+)", text)
    if not match or not match.group(2):
        raise UserError(f"object-store endpoint '{endpoint}' must look like http://host:port, https://host or host[:port] "
                        "(no path)")
    scheme, host = match.groups()
    tls = (scheme != "http") if scheme else True
    if secure is not None:
        if scheme and secure != tls:
            raise UserError(f"object-store endpoint '{endpoint}' says {scheme}:// but storage.secure is {secure}; "
                            "drop one of them")
        tls = secure
    return host, tls


def _env_number(name: str, cast: Callable[[str], T], default: T) -> T:
    value = os.environ.get(name)
    if value is None or not value.strip():
        return default
    try:
        return cast(value)
    except ValueError:
        raise UserError(f"${name}='{value}' is not a number") from None


def settings_from(config: "StorageConfig | None" = None) -> Settings:
    """Resolve endpoint/TLS/region/retries: the config's values first, then the environment."""
    endpoint = getattr(config, "endpoint", None) or os.environ.get(ENDPOINT_ENV) or os.environ.get(TENSORBOARD_ENDPOINT_ENV) \
        or DEFAULT_ENDPOINT
    host, secure = split_endpoint(endpoint, getattr(config, "secure", None))
    region = getattr(config, "region", None) or next((os.environ[e] for e in REGION_ENVS if os.environ.get(e)), None)
    retries = getattr(config, "retries", None)
    backoff = getattr(config, "backoff_s", None)
    return Settings(
        endpoint=host, secure=secure, region=region,
        retries=_env_number(RETRIES_ENV, int, DEFAULT_RETRIES) if retries is None else retries,
        backoff_s=_env_number(BACKOFF_ENV, float, DEFAULT_BACKOFF_S) if backoff is None else backoff,
    )


def settings_env(config: "StorageConfig") -> dict[str, str]:
    """The environment a pod needs to reach the store as ``config`` says (no credentials: those come from the Secret).

    Only what the config sets; what it leaves out comes from the rightsizer-storage ConfigMap
    (:data:`CONFIG_MAP_KEYS_TO_ENV`), which every task and TrainJob node also gets."""
    env: dict[str, str] = {}
    if config.endpoint:
        env[ENDPOINT_ENV] = settings_from(config).url
    if config.bucket:
        env[BUCKET_ENV] = config.bucket
    if config.prefix:
        env[PREFIX_ENV] = config.prefix
    if config.region:
        env["AWS_REGION"] = config.region
    if config.retries != DEFAULT_RETRIES:
        env[RETRIES_ENV] = str(config.retries)
    if config.backoff_s != DEFAULT_BACKOFF_S:
        env[BACKOFF_ENV] = str(config.backoff_s)
    return env


def credentials_from_env(secret_name: str = "mlpipeline-minio-artifact") -> tuple[str, str, str | None]:
    access = os.environ.get(ACCESS_KEY_ENV, "").strip()
    secret = os.environ.get(SECRET_KEY_ENV, "").strip()
    if not access or not secret:
        missing = " and ".join(n for n, v in ((ACCESS_KEY_ENV, access), (SECRET_KEY_ENV, secret)) if not v)
        raise UserError(f"no object-store credentials: set {missing} in the environment (on a cluster they come from "
                        f"the k8s Secret '{secret_name}', keys accesskey/secretkey); credentials never go in the config")
    return access, secret, os.environ.get(SESSION_TOKEN_ENV) or None


# ---------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ChecksumMismatch(Exception):
    """A downloaded object's bytes do not match its recorded sha256 (or MD5 ETag): fetched again, then an error."""


def _is_transient(exc: BaseException) -> bool:
    import urllib3
    from minio.error import InvalidResponseError, S3Error, ServerError

    if isinstance(exc, ChecksumMismatch):  # a cut or garbled transfer; a second read tells it from real damage
        return True
    if isinstance(exc, S3Error):
        return exc.code in _TRANSIENT_CODES
    if isinstance(exc, ServerError):
        return exc.status_code >= 500
    if isinstance(exc, InvalidResponseError):
        return getattr(exc, "_code", 0) >= 500
    return isinstance(exc, (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError))


class Store:
    """A bucket-aware client: retries, checksums, atomic downloads, one-line errors."""

    def __init__(self, settings: Settings, access_key: str, secret_key: str, session_token: str | None = None,
                 secret_name: str = "mlpipeline-minio-artifact"):
        import certifi
        import urllib3
        from minio import Minio

        self.settings = settings
        self.secret_name = secret_name
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=settings.connect_timeout_s, read=settings.read_timeout_s),
            retries=False,  # retried here, with our own bounded backoff
            maxsize=8,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("AWS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE") or certifi.where(),
        )
        self.client = Minio(settings.endpoint, access_key=access_key, secret_key=secret_key,
                            session_token=session_token, secure=settings.secure, region=settings.region, http_client=http)

    @classmethod
    def from_env(cls, config: "StorageConfig | None" = None, **overrides: Any) -> "Store":
        """Settings from ``config``/env (``overrides`` replace fields), credentials from env only."""
        settings = settings_from(config)
        if overrides:
            settings = Settings(**{**settings.__dict__, **overrides})
        secret_name = getattr(config, "secret_name", None) or "mlpipeline-minio-artifact"
        return cls(settings, *credentials_from_env(secret_name), secret_name=secret_name)

    # -- plumbing ---------------------------------------------------------------------------
    def _call(self, action: str, ref: ObjectRef, fn: Callable[[], T]) -> T:
        """Run ``fn`` with bounded retries on transient failures; map the rest to UserError."""
        from minio.error import S3Error

        attempts = self.settings.retries + 1
        for attempt in range(attempts):
            try:
                return fn()
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified below
                if _is_transient(exc):
                    if attempt + 1 < attempts:
                        time.sleep(self.settings.backoff_s * (2 ** attempt))
                        continue
                    if isinstance(exc, ChecksumMismatch):
                        raise UserError(f"{exc} (read {attempts} times)") from None
                    reason = _short(exc)
                    raise UserError(f"cannot {action} {ref.uri}: object store at {self.settings.url} unreachable or "
                                    f"failing after {attempts} attempts ({reason}); check storage.endpoint / "
                                    f"${ENDPOINT_ENV} and that the server is up") from None
                if isinstance(exc, S3Error):
                    raise self._s3_error(action, ref, exc) from None
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _s3_error(self, action: str, ref: ObjectRef, exc) -> UserError:
        code = exc.code or "error"
        if code == "NoSuchBucket" or (code in _MISSING_KEY_CODES and not self._bucket_exists_quiet(ref.bucket)):
            return UserError(f"cannot {action} {ref.uri}: bucket '{ref.bucket}' does not exist on {self.settings.url}; "
                             "create it (k8s/ has a bucket Job) or set storage.bucket")
        if code in _MISSING_KEY_CODES:
            return UserError(f"cannot {action} {ref.uri}: no such object on {self.settings.url}")
        if code in _CREDENTIAL_CODES:
            return UserError(f"cannot {action} {ref.uri}: the object store at {self.settings.url} refused the credentials "
                             f"({code}); check {ACCESS_KEY_ENV}/{SECRET_KEY_ENV} (k8s Secret '{self.secret_name}')")
        return UserError(f"cannot {action} {ref.uri}: {code}: {exc.message or 'object store error'}")

    def _bucket_exists_quiet(self, bucket: str) -> bool:
        try:
            return self.client.bucket_exists(bucket)
        except Exception:  # noqa: BLE001 - only used to word an error message
            return True

    # -- queries ----------------------------------------------------------------------------
    def bucket_exists(self, bucket: str) -> bool:
        return self._call("check bucket", ObjectRef(bucket, ""), lambda: self.client.bucket_exists(bucket))

    def make_bucket(self, bucket: str) -> None:
        ref = ObjectRef(bucket, "")
        if not self.bucket_exists(bucket):
            self._call("create bucket", ref, lambda: self.client.make_bucket(bucket))

    def stat(self, uri: str) -> ObjectInfo | None:
        """The object's size/etag, or None when there is no such object (a missing bucket is an error)."""
        from minio.error import S3Error

        ref = parse_uri(uri)
        if not ref.key or ref.key.endswith("/"):
            return None

        def stat():
            try:
                found = self.client.stat_object(ref.bucket, ref.key)
            except S3Error as exc:
                if exc.code in _MISSING_KEY_CODES and self.client.bucket_exists(ref.bucket):
                    return None
                raise
            return ObjectInfo(ref.key, found.size or 0, (found.etag or "").strip('"'))

        return self._call("read", ref, stat)

    def list(self, uri: str) -> list[ObjectInfo]:
        """Every object under the prefix ``uri`` (recursively), sorted by key."""
        ref = parse_uri(uri)

        def listing():
            return [ObjectInfo(o.object_name, o.size or 0, (o.etag or "").strip('"'))
                    for o in self.client.list_objects(ref.bucket, prefix=ref.prefix, recursive=True) if not o.is_dir]

        return sorted(self._call("list", ref, listing), key=lambda o: o.key)

    # -- files ------------------------------------------------------------------------------
    def upload_file(self, path: str | Path, uri: str) -> str:
        """Upload one file with its sha256 as metadata; returns the sha256."""
        path = Path(path)
        ref = parse_uri(uri)
        if not ref.key or ref.key.endswith("/"):
            raise UserError(f"'{uri}' names a prefix; give the object's full key to upload '{path.name}'")
        if not path.is_file():
            raise UserError(f"cannot upload '{path}': not a file")
        digest = _sha256_file(path)
        self._call("upload to", ref, lambda: self.client.fput_object(ref.bucket, ref.key, str(path),
                                                                      metadata={SHA256_META: digest}))
        return digest

    def download_file(self, uri: str, path: str | Path) -> Path:
        """Download one object to ``path`` (via a temporary name), verifying its checksum."""
        ref = parse_uri(uri)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")

        def fetch():
            digest, md5 = hashlib.sha256(), hashlib.md5()  # noqa: S324 - md5 only to compare with the ETag
            response = self.client.get_object(ref.bucket, ref.key)
            try:
                with open(tmp, "wb") as handle:
                    for chunk in response.stream(1 << 20):
                        handle.write(chunk)
                        digest.update(chunk)
                        md5.update(chunk)
                headers = {k.lower(): v for k, v in response.headers.items()}
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            finally:
                response.close()
                response.release_conn()
            _verify(ref, digest.hexdigest(), md5.hexdigest(), headers)

        try:
            self._call("download", ref, fetch)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, path)
        return path

    # -- directories ------------------------------------------------------------------------
    def upload_dir(self, local_dir: str | Path, uri: str) -> int:
        """Upload every file under ``local_dir`` below prefix ``uri``; ``summary.json`` goes last."""
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise UserError(f"cannot upload '{local_dir}': not a directory")
        ref = parse_uri(uri)
        files = sorted((p for p in local_dir.rglob("*") if p.is_file()),
                       key=lambda p: (p.relative_to(local_dir).as_posix() == SUMMARY_LAST, p.as_posix()))
        for file in files:
            self.upload_file(file, ref.child(file.relative_to(local_dir).as_posix()).uri)
        return len(files)

    def _objects_under(self, ref: ObjectRef) -> list[ObjectInfo]:
        objects = self.list(ref.uri)
        if not objects:
            if not self.bucket_exists(ref.bucket):
                raise UserError(f"cannot download {ref.uri}: bucket '{ref.bucket}' does not exist on {self.settings.url}; "
                                "create it (k8s/ has a bucket Job) or set storage.bucket")
            raise UserError(f"cannot download {ref.uri}: no such object or prefix on {self.settings.url}")
        return objects

    def download_dir(self, uri: str, local_dir: str | Path) -> Path:
        """Download everything under prefix ``uri`` into ``local_dir`` (built aside, renamed into place)."""
        ref = parse_uri(uri)
        local_dir = Path(local_dir)
        objects = self._objects_under(ref)
        local_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = local_dir.with_name(f".{local_dir.name}.{os.getpid()}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        try:
            for item in objects:
                self.download_file(ObjectRef(ref.bucket, item.key).uri, staging / item.key[len(ref.prefix):])
            if local_dir.exists():
                shutil.rmtree(local_dir)
            os.replace(staging, local_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return local_dir

    def sync_dir(self, uri: str, local_dir: str | Path, match: Callable[[str], bool] | None = None) -> int:
        """Bring ``local_dir`` up to date with prefix ``uri``, fetching only new or changed objects
        (and of those only the keys ``match`` accepts, when given).

        Each file is still downloaded atomically and verified; a small manifest of ETags in
        ``local_dir`` remembers what is current. Returns how many files were fetched.
        """
        ref = parse_uri(uri)
        local_dir = Path(local_dir)
        local_dir.mkdir(parents=True, exist_ok=True)
        manifest_path = local_dir / SYNC_MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        fetched = 0
        for item in self._objects_under(ref):
            relative = item.key[len(ref.prefix):]
            target = local_dir / relative
            if match is not None and not match(item.key):
                continue
            if manifest.get(relative) == [item.etag, item.size] and target.exists():
                continue
            self.download_file(ObjectRef(ref.bucket, item.key).uri, target)
            manifest[relative] = [item.etag, item.size]
            fetched += 1
        tmp = manifest_path.with_name(manifest_path.name + ".tmp")
        tmp.write_text(json.dumps(manifest))
        os.replace(tmp, manifest_path)
        return fetched


def _verify(ref: ObjectRef, actual: str, actual_md5: str, headers: dict[str, str]) -> None:
    """The bytes read against the object's recorded sha256, else its MD5 ETag (objects from other tools)."""
    expected = headers.get(f"x-amz-meta-{SHA256_META}")
    etag = headers.get("etag", "").strip('"')
    if expected and expected != actual:
        raise ChecksumMismatch(f"checksum mismatch for {ref.uri}: sha256 {actual[:12]}… but the object records "
                               f"{expected[:12]}…; the object was changed or corrupted after upload — upload it again")
    if not expected and re.fullmatch(r"[0-9a-f]{32}", etag) and etag != actual_md5:
        raise ChecksumMismatch(f"checksum mismatch for {ref.uri}: MD5 {actual_md5[:12]}… but ETag {etag[:12]}…; "
                               "download again or re-upload the object")


def _short(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None) or exc
    text = str(inner).splitlines()[0] if str(inner) else type(inner).__name__
    text = re.sub(r"<urllib3[^>]*>:?\s*", "", text)
    return f"{type(inner).__name__}: {text[:160]}"


# ---------------------------------------------------------------------------------------------
# what other modules call


def download_source(uri: str, local_dir: str | Path, config: "StorageConfig | None" = None) -> Path:
    """Fetch a ``data.source`` URI: one object -> a file in ``local_dir``; a prefix -> a directory."""
    ref = parse_uri(uri)
    if not ref.key:
        raise UserError(f"data.source '{uri}' names a whole bucket; give the file or folder inside it "
                        f"(e.g. s3://{ref.bucket}/data/train.csv)")
    store = Store.from_env(config)
    local_dir = Path(local_dir)
    name = ref.key.rstrip("/").rsplit("/", 1)[-1]
    if not ref.key.endswith("/") and store.stat(uri) is not None:
        return store.download_file(uri, local_dir / name)
    return store.download_dir(uri, local_dir / name)


def fetch_input(value: str, cache_dir: str | Path, config: "StorageConfig | None" = None) -> Path:
    """A stage input: a local path is returned as is; an ``s3://`` prefix is downloaded under ``cache_dir``."""
    if not is_uri(value):
        return Path(value)
    ref = parse_uri(value)
    name = ref.key.rstrip("/").rsplit("/", 1)[-1] or ref.bucket
    digest = hashlib.sha256(value.encode()).hexdigest()[:10]
    return Store.from_env(config).download_dir(value, Path(cache_dir) / f"{name}-{digest}")


def publish_output(local_dir: str | Path, uri: str, config: "StorageConfig | None" = None) -> int:
    """Upload a finished stage directory to ``uri`` (only from rank 0 when run under torchrun)."""
    if process_rank() != 0:
        return 0
    return Store.from_env(config).upload_dir(local_dir, uri)
