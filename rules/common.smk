"""Input functions and path helpers shared by the rules."""

from pathlib import Path


def teacher_names():
    return sorted(config["teachers"])


def teacher_setting(name, key, default=None):
    return config["teachers"][name].get(key, default)


def teacher_source(wildcards):
    """The asset source of a teacher as a plain dict (path | url+sha256 | package+subdir)."""
    return dict(config["teachers"][wildcards.teacher]["source"])


def teacher_input(wildcards):
    """A local source is an input (edits to it rerun the import); a URL is downloaded first."""
    src = teacher_source(wildcards)
    if src.get("path"):
        return src["path"]
    if src.get("url"):
        return download_path(wildcards.teacher, src["url"])
    return []


def download_path(asset, url):
    name = Path(url.split("?")[0]).name or "download"
    return f"resources/downloads/{asset}/{name}"


def download_source(wildcards):
    src = teacher_source(wildcards)
    return {"url": src["url"], "sha256": src["sha256"]}


def all_targets():
    return expand("resources/teachers/{teacher}.json", teacher=teacher_names())
