"""Fixtures: a local HTTP server, a workflow copy on the tiny config. Helpers are in helpers.py."""

from __future__ import annotations

import http.server
import socketserver
import threading

import pytest
import yaml

pytest.importorskip("transformers", reason="parity tests need transformers (pip install -e .[test])")

from helpers import copy_workflow, tiny_config  # noqa: E402

# The two files that take half of the suite's time (SLURM, the end-to-end workflows) start first,
# so that under `-n 2 --dist loadfile` the two workers end together rather than one running them
# alone at the end. Only the order changes.
LONGEST_FIRST = ("test_slurm.py", "test_workflow_tasks.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture
def http_server(tmp_path):
    """Serve ``tmp_path / 'www'`` on 127.0.0.1; yields (root_dir, base_url)."""
    root = tmp_path / "www"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a):  # keep pytest output clean
            pass

    server = socketserver.TCPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_workdir(tmp_path):
    """A copy of the workflow whose config.yaml is the tiny config (teacher, corpus, general phases)."""
    wd = copy_workflow(tmp_path)
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump(tiny_config(tmp_path)))
    return wd
