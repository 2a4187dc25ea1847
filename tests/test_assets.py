"""Asset resolution: downloads from a real HTTP server on 127.0.0.1, sha256 checks, packages."""

from __future__ import annotations

import hashlib

import pytest

from bertdistill.assets import AssetError, download, package_path, resolve_local


def test_download_verifies_and_reuses(http_server, tmp_path):
    root, url = http_server
    (root / "w.bin").write_bytes(b"weights" * 1000)
    sha = hashlib.sha256(b"weights" * 1000).hexdigest()
    dest = download(f"{url}/w.bin", sha, tmp_path / "dl" / "w.bin")
    assert dest.read_bytes() == b"weights" * 1000
    (root / "w.bin").unlink()  # a verified file is not fetched again
    assert download(f"{url}/w.bin", sha, dest) == dest


def test_corrupt_download_leaves_nothing(http_server, tmp_path):
    root, url = http_server
    (root / "w.bin").write_bytes(b"truncated")
    with pytest.raises(AssetError, match="sha256") as e:
        download(f"{url}/w.bin", "0" * 64, tmp_path / "dl" / "w.bin")
    assert "\n" not in str(e.value)
    assert list((tmp_path / "dl").iterdir()) == []


def test_existing_corrupt_file_is_reported_not_replaced(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"old")
    with pytest.raises(AssetError, match="delete the file"):
        download("http://127.0.0.1:9/never", "0" * 64, f)
    assert f.read_bytes() == b"old"


def test_unreachable_url(tmp_path):
    with pytest.raises(AssetError, match="download failed"):
        download("http://127.0.0.1:9/x.bin", "0" * 64, tmp_path / "x.bin", timeout=5)


def test_sources(tmp_path):
    with pytest.raises(AssetError, match="no such file"):
        resolve_local({"path": str(tmp_path / "absent")}, tmp_path)
    with pytest.raises(AssetError, match="needs its sha256"):
        resolve_local({"url": "http://127.0.0.1/x"}, tmp_path)
    with pytest.raises(AssetError, match="pip install --no-deps no-such-pkg-xyz"):
        package_path("no_such_pkg_xyz")
    assert package_path("bertdistill").name == "bertdistill"
