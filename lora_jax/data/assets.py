"""Fetches and prepares the data that runs offline: ``python -m lora_jax.data.assets``.

What it does (idempotent; a second run only checks files and returns in ~1 s):

1. ``pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`` into the cache
   (needs PyPI; skipped when the archive or the extracted file is already there).
2. Extracts ``additional_resources/hutto_ICWSM_2014.tar.gz`` ->
   ``movieReviewSnippets_GroundTruth.txt`` into the cache.
3. Prepares the TFDS dataset ``mr_polarity`` (configs ``binary`` and ``rating``) as
   array_record under ``<cache>/tensorflow_datasets``.

The cache is ``$LORA_JAX_CACHE`` or ``~/.cache/lora_jax``.

``python -m lora_jax.data.assets e2e`` (optional, ``make assets-e2e``) prepares the E2E NLG
references instead (``e2e_nlg_bigbench``, see ``ensure_e2e``).

Example:
    >>> from lora_jax.data import assets
    >>> assets.ensure_mr()  # doctest: +SKIP
    PosixPath('/root/.cache/lora_jax/tensorflow_datasets')
"""

from __future__ import annotations

import argparse
import io
import pathlib
import subprocess
import sys
import tarfile

from lora_jax.cache import cache_root
from lora_jax.user_errors import user_errors

VADER_VERSION = "3.3.2"
VADER_ARCHIVE = f"vaderSentiment-{VADER_VERSION}.tar.gz"
_INNER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"
MR_FILENAME = "movieReviewSnippets_GroundTruth.txt"
FETCH_COMMAND = "`make install` or `python -m lora_jax.data.assets`"
MR_CONFIGS = ("binary", "rating")


def cache_dir() -> pathlib.Path:
    """The asset cache: ``$LORA_JAX_CACHE`` or ``~/.cache/lora_jax`` (`lora_jax.cache`)."""
    return cache_root()


def data_dir() -> pathlib.Path:
    """The TFDS data dir: ``<cache>/tensorflow_datasets``."""
    return cache_dir() / "tensorflow_datasets"


def mr_source_path() -> pathlib.Path:
    """Where the extracted MR ground-truth file lives."""
    return cache_dir() / MR_FILENAME


def fetch_vader_archive(*, force: bool = False) -> pathlib.Path:
    """Downloads the vaderSentiment source archive with pip (once) and returns its path."""
    cache = cache_dir()
    archive = cache / VADER_ARCHIVE
    if archive.exists() and not force:
        return archive
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"vaderSentiment=={VADER_VERSION}",
        "-d",
        str(cache),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not archive.exists():
        raise RuntimeError(
            f"Could not download vaderSentiment {VADER_VERSION} from PyPI "
            f"(command: {' '.join(cmd)}):\n{result.stderr[-2000:]}"
        )
    return archive


def extract_mr(archive: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Extracts the MR ground-truth file from the vaderSentiment archive into ``dest``."""
    with tarfile.open(archive, "r:gz") as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(_INNER_ARCHIVE)), None)
        if member is None:
            raise RuntimeError(f"{archive} has no {_INNER_ARCHIVE}")
        inner_bytes = outer.extractfile(member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        member = next((m for m in inner.getmembers() if m.name.endswith("/" + MR_FILENAME)), None)
        if member is None:
            raise RuntimeError(f"{archive}:{_INNER_ARCHIVE} has no {MR_FILENAME}")
        data = inner.extractfile(member).read()
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / MR_FILENAME
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # atomic: a crash never leaves a half-written file
    return out


def _mr_builder(config: str, data_dir_: pathlib.Path):
    from lora_jax.data.mr import MrPolarity

    return MrPolarity(config=config, data_dir=str(data_dir_), file_format="array_record")


def mr_prepared(config: str = "binary", data_dir_: pathlib.Path | None = None) -> bool:
    """Whether the ``mr_polarity/<config>`` TFDS dataset is prepared."""
    builder = _mr_builder(config, data_dir_ or data_dir())
    return builder.is_prepared()


def prepare_mr(
    source_dir: pathlib.Path | None = None,
    data_dir_: pathlib.Path | None = None,
    configs: tuple[str, ...] = MR_CONFIGS,
) -> pathlib.Path:
    """Prepares ``mr_polarity`` (array_record) from ``source_dir/<MR_FILENAME>``; offline."""
    import tensorflow_datasets as tfds

    source_dir = source_dir or cache_dir()
    data_dir_ = data_dir_ or data_dir()
    if not (source_dir / MR_FILENAME).exists():
        raise FileNotFoundError(
            f"{source_dir / MR_FILENAME} is missing. Fetch it with {FETCH_COMMAND}."
        )
    for config in configs:
        builder = _mr_builder(config, data_dir_)
        if builder.is_prepared():
            continue
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(source_dir)),
            file_format="array_record",
        )
    return data_dir_


def ensure_mr(*, fetch: bool = True, force: bool = False) -> pathlib.Path:
    """Makes sure ``mr_polarity`` is prepared; returns the TFDS data dir.

    Args:
        fetch: allow downloading the vaderSentiment archive from PyPI when the source
            file is missing. With ``fetch=False`` a missing file raises FileNotFoundError
            naming the command that fetches it.
        force: re-download, re-extract and re-prepare.
    """
    src = mr_source_path()
    if force or not all(mr_prepared(c) for c in MR_CONFIGS):
        if force or not src.exists():
            if not fetch:
                raise FileNotFoundError(
                    f"MR data not found in {cache_dir()}. Fetch it with {FETCH_COMMAND}."
                )
            archive = fetch_vader_archive(force=force)
            extract_mr(archive, cache_dir())
        if force:
            import shutil

            shutil.rmtree(data_dir() / "mr_polarity", ignore_errors=True)
        prepare_mr()
    return data_dir()


# ---- E2E NLG (optional: `python -m lora_jax.data.assets e2e`) ------------------------------------
#
# bigbench 1.0.0 is published on PyPI as a source archive only, and `pip download` cannot fetch
# it: after downloading, pip prepares its metadata, which declares a direct-URL dependency
# (bleurt @ file://...) that PyPI distributions may not have, and pip deletes the file. So we
# resolve the file through PyPI's JSON simple index (PEP 691), download it with urllib, check
# the sha256 pinned here, extract the one task file and delete the 358 MB archive.

BIGBENCH_VERSION = "1.0.0"
BIGBENCH_ARCHIVE = f"bigbench-{BIGBENCH_VERSION}.tar.gz"
BIGBENCH_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
BIGBENCH_INDEX = "https://pypi.org/simple/bigbench/"
E2E_MEMBER = f"bigbench-{BIGBENCH_VERSION}/bigbench/benchmark_tasks/gem/e2e_nlg/task.json"
E2E_FETCH_COMMAND = "`make assets-e2e` or `python -m lora_jax.data.assets e2e`"


def e2e_source_path() -> pathlib.Path:
    """Where the extracted E2E task file lives: ``<cache>/e2e_nlg/task.json``."""
    from lora_jax.data.e2e import SOURCE_FILENAME, SOURCE_SUBDIR

    return cache_dir() / SOURCE_SUBDIR / SOURCE_FILENAME


def fetch_bigbench_archive(dest: pathlib.Path) -> pathlib.Path:
    """Downloads bigbench's source archive from PyPI into ``dest`` (sha256-checked)."""
    import hashlib
    import json
    import urllib.request

    request = urllib.request.Request(
        BIGBENCH_INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        files = json.load(r)["files"]
    entry = next((f for f in files if f["filename"] == BIGBENCH_ARCHIVE), None)
    if entry is None:  # seen 2026-12-07: the index keeps only bigbench 0.0.1 (no task files)
        listed = ", ".join(f["filename"] for f in files) or "nothing"
        raise FileNotFoundError(
            f"{BIGBENCH_INDEX} no longer lists {BIGBENCH_ARCHIVE} (it lists {listed}), the "
            "only offline source of E2E this project knows. To use E2E, put its task file at "
            f"{e2e_source_path()}: `{E2E_MEMBER.split('/', 1)[1]}` from a copy of that archive "
            "or of github.com/google/BIG-bench, then run the same command again. Or train on "
            "your own files: data=local (docs/data.md)."
        )
    dest.mkdir(parents=True, exist_ok=True)
    archive, digest = dest / BIGBENCH_ARCHIVE, hashlib.sha256()
    with urllib.request.urlopen(entry["url"], timeout=60) as r, open(archive, "wb") as f:
        while chunk := r.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != BIGBENCH_SHA256:
        archive.unlink()
        raise RuntimeError(
            f"{entry['url']}: sha256 {digest.hexdigest()} != pinned {BIGBENCH_SHA256}"
        )
    return archive


def extract_e2e(archive: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """Extracts only the E2E task file from the bigbench archive to ``dest`` (atomically)."""
    with tarfile.open(archive, "r|gz") as tar:  # streaming: one pass, no index
        for member in tar:
            if member.name == E2E_MEMBER:
                data = tar.extractfile(member).read()
                break
        else:
            raise RuntimeError(f"{archive} has no {E2E_MEMBER}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def e2e_builder(data_dir_: pathlib.Path):
    from lora_jax.data.e2e import E2eNlgBigbench

    return E2eNlgBigbench(data_dir=str(data_dir_), file_format="array_record")


def ensure_e2e(*, fetch: bool = True, force: bool = False) -> pathlib.Path:
    """Makes sure ``e2e_nlg_bigbench`` is prepared; returns the TFDS data dir.

    With ``fetch=False`` a missing source file raises FileNotFoundError naming the command
    that fetches it. The archive is deleted after extraction; only the task file (300 KB)
    and the prepared dataset stay in the cache.
    """
    import shutil

    import tensorflow_datasets as tfds

    src = e2e_source_path()
    if force:
        shutil.rmtree(data_dir() / "e2e_nlg_bigbench", ignore_errors=True)
    builder = e2e_builder(data_dir())
    if builder.is_prepared():
        return data_dir()
    if force or not src.exists():
        if not fetch:
            raise FileNotFoundError(
                f"E2E data not found at {src}. Fetch it with {E2E_FETCH_COMMAND}."
            )
        archive = fetch_bigbench_archive(cache_dir())
        try:
            extract_e2e(archive, src)
        finally:
            archive.unlink(missing_ok=True)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(cache_dir())),
        file_format="array_record",
    )
    return data_dir()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "what",
        nargs="?",
        default="mr",
        choices=("mr", "e2e"),
        help="mr (default): MR polarity; e2e: E2E NLG from the bigbench archive (optional)",
    )
    parser.add_argument("--force", action="store_true", help="re-fetch and re-prepare")
    args = parser.parse_args(argv)
    if args.what == "e2e":
        with user_errors():
            path = ensure_e2e(force=args.force)
        print(f"e2e_nlg_bigbench ready in {path} (source {e2e_source_path()})")
        return 0
    path = ensure_mr(force=args.force)
    print(f"mr_polarity ready in {path} (cache {cache_dir()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
