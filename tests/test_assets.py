"""Asset resolution: downloads from a real HTTP server on 127.0.0.1, sha256 checks, packages."""

from __future__ import annotations

import hashlib
import http.server
import logging
import re
import threading
import time

import pytest

from bertdistill.assets import AssetError, download, package_path, partial_path, resolve_local, sha256sum


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
        download("http://127.0.0.1:9/x.bin", "0" * 64, tmp_path / "x.bin", timeout=5, retries=1, backoff=0.01)


def test_sources(tmp_path):
    with pytest.raises(AssetError, match="no such file"):
        resolve_local({"path": str(tmp_path / "absent")}, tmp_path)
    with pytest.raises(AssetError, match="needs its sha256"):
        resolve_local({"url": "http://127.0.0.1/x"}, tmp_path)
    with pytest.raises(AssetError, match="pip install --no-deps no-such-pkg-xyz"):
        package_path("no_such_pkg_xyz")
    assert package_path("bertdistill").name == "bertdistill"


# ----------------------------------------------------------------------------------------------
# Faults: a scripted HTTP server on 127.0.0.1 that drops connections, fails, and honours Range

DATA = bytes(range(256)) * 1000  # 256,000 bytes
DATA_SHA = hashlib.sha256(DATA).hexdigest()
FAST = dict(timeout=5, backoff=0.01)  # real sockets, but no real waiting between attempts


class ScriptedServer:
    """Serves ``data`` at any path; ``plan[i]`` says what the i-th request gets, the last one repeats.

    Steps: ``"ok"`` (206 for ``Range: bytes=N-``, else 200), ``"norange"`` (always 200 with the
    whole file), ``("drop", n)`` (headers for the whole rest, then n bytes of it and close),
    ``("stall", n)`` (n bytes, then silence for ``stall_s``), or an int HTTP status.
    ``ranges`` records each request's Range header (None when absent).
    """

    def __init__(self, data: bytes, plan: list) -> None:
        self.data, self.plan, self.ranges, self.stall_s = data, plan, [], 2.0
        me = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                me.serve(self)

            def log_message(self, *a) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/w.bin"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()  # quick shutdown

    def serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        rng = h.headers.get("Range")
        self.ranges.append(rng)
        step = self.plan[min(len(self.ranges) - 1, len(self.plan) - 1)]
        if isinstance(step, int):
            h.send_error(step)
            return
        start = int(re.fullmatch(r"bytes=(\d+)-", rng)[1]) if rng and step != "norange" else 0
        n = len(self.data)
        if start >= n > 0 and rng:
            h.send_response(416)
            h.send_header("Content-Range", f"bytes */{n}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(206 if start else 200)
        if start:
            h.send_header("Content-Range", f"bytes {start}-{n - 1}/{n}")
        h.send_header("Content-Length", str(n - start))  # always the whole rest, even when dropping
        h.end_headers()
        body = self.data[start:]
        if isinstance(step, tuple):
            body = body[: step[1]]
        h.wfile.write(body)
        h.wfile.flush()
        if isinstance(step, tuple) and step[0] == "stall":
            time.sleep(self.stall_s)
        # HTTP/1.0: the server closes the connection now, short of Content-Length for "drop"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    """``scripted(plan, data=DATA)`` starts a ScriptedServer; all are closed after the test."""
    servers: list[ScriptedServer] = []

    def start(plan: list, data: bytes = DATA) -> ScriptedServer:
        servers.append(ScriptedServer(data, plan))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def test_dropped_connection_is_resumed_with_range(scripted, tmp_path, caplog):
    srv = scripted([("drop", 100_000), "ok"])
    dest = tmp_path / "dl" / "w.bin"
    with caplog.at_level(logging.WARNING, logger="bertdistill.assets"):
        assert download(srv.url, DATA_SHA, dest, **FAST) == dest
    assert srv.ranges == [None, "bytes=100000-"]  # resumed at exactly the bytes already received
    assert dest.read_bytes() == DATA and sha256sum(dest) == DATA_SHA
    assert not partial_path(dest, DATA_SHA).exists()
    assert "connection closed after 100,000 of 256,000 bytes" in caplog.text


def test_always_dropping_keeps_partial_and_a_rerun_resumes(scripted, tmp_path):
    bad = scripted([("drop", 50_000)])
    dest = tmp_path / "dl" / "w.bin"
    part = partial_path(dest, DATA_SHA)
    with pytest.raises(AssetError) as e:
        download(bad.url, DATA_SHA, dest, retries=2, **FAST)
    msg = str(e.value)
    assert "connection closed after 150,000 of 256,000 bytes" in msg
    assert "(3 attempts, resumed with HTTP Range)" in msg
    assert bad.url in msg and str(dest) in msg and str(part) in msg and "\n" not in msg
    assert bad.ranges == [None, "bytes=50000-", "bytes=100000-"]
    assert part.read_bytes() == DATA[:150_000] and not dest.exists()
    good = scripted(["ok"])  # the rerun of the command, once the network is back
    assert download(good.url, DATA_SHA, dest, **FAST).read_bytes() == DATA
    assert good.ranges == ["bytes=150000-"] and not part.exists()


def test_server_without_range_restarts_from_zero(scripted, tmp_path, caplog):
    srv = scripted([("drop", 100_000), "norange"])
    dest = tmp_path / "w.bin"
    with caplog.at_level(logging.INFO, logger="bertdistill.assets"):
        assert download(srv.url, DATA_SHA, dest, **FAST).read_bytes() == DATA
    assert srv.ranges == [None, "bytes=100000-"]  # asked to resume, got the whole file, truncated first
    assert "ignored the Range request" in caplog.text


def test_http_404_is_not_retried(scripted, tmp_path):
    srv = scripted([404])
    dest = tmp_path / "w.bin"
    with pytest.raises(AssetError, match="HTTP 404 Not Found; fix the URL in the config") as e:
        download(srv.url, DATA_SHA, dest, **FAST)
    assert len(srv.ranges) == 1
    assert srv.url in str(e.value) and str(dest) in str(e.value)


def test_http_503_twice_then_ok(scripted, tmp_path, caplog):
    srv = scripted([503, 503, "ok"])
    with caplog.at_level(logging.WARNING, logger="bertdistill.assets"):
        assert download(srv.url, DATA_SHA, tmp_path / "w.bin", **FAST).read_bytes() == DATA
    assert len(srv.ranges) == 3
    assert caplog.text.count("HTTP 503 Service Unavailable") == 2


def test_http_503_until_retries_run_out(scripted, tmp_path):
    srv = scripted([503])
    with pytest.raises(AssetError, match=r"HTTP 503 Service Unavailable \(2 attempts\); the server is failing"):
        download(srv.url, DATA_SHA, tmp_path / "w.bin", retries=1, **FAST)
    assert len(srv.ranges) == 2


def test_complete_download_with_wrong_sha256_is_not_retried(scripted, tmp_path):
    srv = scripted(["ok"])
    dest = tmp_path / "w.bin"
    with pytest.raises(AssetError, match="sha256 in the config is wrong") as e:
        download(srv.url, "0" * 64, dest, **FAST)
    assert "points at another file" in str(e.value) and "256,000 bytes" in str(e.value)
    assert len(srv.ranges) == 1
    assert list(tmp_path.iterdir()) == []  # neither dest nor the partial file


def test_complete_partial_file_is_verified_on_416(scripted, tmp_path):
    srv = scripted(["ok"])
    dest = tmp_path / "w.bin"
    partial_path(dest, DATA_SHA).write_bytes(DATA)  # a run that crashed before the rename
    assert download(srv.url, DATA_SHA, dest, **FAST).read_bytes() == DATA
    assert srv.ranges == ["bytes=256000-"]


def test_stalled_transfer_times_out_and_resumes(scripted, tmp_path):
    srv = scripted([("stall", 70_000), "ok"])
    srv.stall_s = 3.0
    dest = tmp_path / "w.bin"
    assert download(srv.url, DATA_SHA, dest, timeout=0.3, backoff=0.01).read_bytes() == DATA
    assert srv.ranges == [None, "bytes=70000-"]


def test_file_url_with_a_stale_partial_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    dest = tmp_path / "dl" / "w.bin"
    dest.parent.mkdir()
    partial_path(dest, DATA_SHA).write_bytes(b"x" * 10)  # file:// has no Range: fetched whole
    assert download(src.as_uri(), DATA_SHA, dest, **FAST).read_bytes() == DATA
    with pytest.raises(AssetError, match="download failed .*No such file"):
        download((tmp_path / "absent.bin").as_uri(), DATA_SHA, tmp_path / "dl" / "a.bin", **FAST)
