"""Config -> file names for the data rules (workflow/rules/data.smk), kept here so that they are testable.

Every function takes the validated workflow config as its first argument.
"""

from __future__ import annotations

from urllib.parse import urlparse

SYNTHETIC_DIR = "resources/synthetic"
SYNTHETIC_FILES = (
    "openimages.tar",
    "llava.tar",
    "3dsrbench_v1_vlmevalkit_circular.tsv",
    "CV-Bench-3D.tsv",
    "Canary.tsv",
)
SYNTHETIC_DIRS = ("SpatialReasonerTrain-SFT", "SpatialReasonerTrain-RL")


def url_sources(config) -> list[str]:
    return [name for name, spec in config["sources"].items() if "url" in spec]


def repo_sources(config) -> list[str]:
    return [name for name, spec in config["sources"].items() if "repo" in spec]


def local_path_of(url: str) -> str | None:
    """The local file behind a file:// URL or a plain path (None for http(s))."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        return None
    if parsed.scheme == "file":
        return parsed.path
    return url


def fetch_inputs(config, source: str) -> list[str]:
    """A local source file is an input of its download, so the rule producing it (the demo's synthesize) runs first."""
    path = local_path_of(config["sources"][source]["url"])
    return [path] if path else []


def source_path(config, name: str) -> str:
    """Where a source's content lies once obtained: a download, a Hub snapshot, or a folder used in place."""
    spec = config["sources"][name]
    if "url" in spec:
        return f"resources/downloads/{name}"
    if "repo" in spec:
        return f"resources/snapshots/{name}"
    return spec["path"]


def image_set_dirs(config, dataset: str) -> list[str]:
    return [f"resources/images/{name}" for name in config["datasets"][dataset]["images"]]


def image_root_args(config, dataset: str) -> list[str]:
    """``COLUMN=FOLDER`` per image set of a dataset: the annotation column and the folder its paths start in."""
    args = []
    for name in config["datasets"][dataset]["images"]:
        spec = config["images"][name]
        root = f"resources/images/{name}/{spec.get('root', '')}".rstrip("/")
        args.append(f"{spec.get('column', 'image_filename')}={root}")
    return args


def configfile_args(configfiles) -> str:
    """The config files of the run, quoted for a shell command (the fetch command reads a source's URL from them)."""
    import shlex

    if not configfiles:
        raise ValueError("no config file: the workflow's sources must come from a --configfile")
    return " ".join(shlex.quote(str(f)) for f in configfiles)


def check_args(config, source: str) -> str:
    """``--sha256 X --size N`` for the configured checks of a URL source."""
    spec = config["sources"][source]
    return " ".join(f"--{key} {spec[key]}" for key in ("sha256", "size") if spec.get(key) is not None)


def pattern_args(config, source: str) -> list[str]:
    patterns = config["sources"][source].get("allow_patterns")
    return ["--allow-patterns", *patterns] if patterns else []
