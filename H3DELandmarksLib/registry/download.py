"""Verified, resumable model downloads into the cache.

A download streams into ``partial/`` (resumed with a Range request when the server allows it),
is checked against the registry's size and sha256, renamed into ``archives/``, and only then
extracted into a temporary directory that is renamed to the package directory. Nothing
unverified ever appears where `resolve_model` looks. Processes sharing a cache take turns on a
model through a lock file (`ModelCache.lock`): one downloads and unpacks, the others wait and then
find the package in place. Only http(s) addresses are fetched, and a redirect may not leave them
(nor go from https to http).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
from tqdm import tqdm

from ..checksums import sha256_of
from ..errors import DownloadError, ModelPackageError
from .cache import ModelCache
from .catalog import Registry, load_registry
from .package import unpack_package
from .resolve import NOT_DOWNLOADED, model_status, resolve_model

DEFAULT_TIMEOUT = (10.0, 60.0)
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF_S = 1.0
CHUNK_BYTES = 1 << 16
CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
WEB_SCHEMES = ("http", "https")

ProgressCallback = Callable[[int, int], None]


class _RetryableFailure(Exception):
    """A failure another attempt may overcome; the message says what happened."""


def download_model(spec: str, cache_dir: str | os.PathLike | None = None, registry: Registry | None = None,
                   **options) -> Path:
    """Make the registered model ``"ID"`` or ``"ID@VERSION"`` available; returns its package directory.

    Bundled and already cached models are returned without any network access. `options` are
    the keyword arguments of `download_file` (progress, show_progress, timeout, retries, ...).
    """
    registry = registry or load_registry()
    entry = registry.find(spec)
    cache = ModelCache.at(cache_dir)
    if model_status(entry, registry, cache) != NOT_DOWNLOADED:
        return resolve_model(entry.spec, cache_dir=cache.root, registry=registry)
    if entry.url is None:
        raise ModelPackageError(f"The bundled model {entry.spec} is missing from {registry.bundled_path(entry)}.")
    with cache.lock(entry.id, entry.version):
        if cache.has_package(entry.id, entry.version):
            return cache.package_dir(entry.id, entry.version)
        archive = cache.archive_path(entry.id, entry.version)
        if archive.exists() and sha256_of(archive) != entry.sha256:
            archive.unlink()
        if not archive.exists():
            download_file(entry.url, archive, entry.sha256, entry.size, cache.partial_path(entry.id, entry.version),
                          description=entry.spec, **options)
        try:
            unpack_package(archive, cache.package_dir(entry.id, entry.version), expected_spec=entry.spec)
        except ModelPackageError:
            archive.unlink(missing_ok=True)
            raise
    return cache.package_dir(entry.id, entry.version)


def download_file(url: str, destination: str | os.PathLike, sha256: str, size: int,
                  partial: str | os.PathLike, *,
                  progress: ProgressCallback | None = None, show_progress: bool = True,
                  description: str | None = None, timeout: tuple[float, float] = DEFAULT_TIMEOUT,
                  retries: int = DEFAULT_RETRIES, backoff_s: float = DEFAULT_BACKOFF_S,
                  session: requests.Session | None = None) -> Path:
    """Download `url` to `destination`, which appears only once its size and sha256 match.

    Bytes accumulate in `partial`; after a dropped connection, a timeout or a 5xx answer the
    transfer is retried (waiting `backoff_s`, then twice as long, ...) and resumed from `partial`
    when the server answers a Range request with 206, restarted when it answers 200. A partial
    file left by a failed or interrupted call is resumed by the next one. `progress(done, total)`
    is called after every chunk; it may raise to cancel (the partial file is kept).
    """
    destination, partial = Path(destination), Path(partial)
    _check_web_address(url)
    partial.parent.mkdir(parents=True, exist_ok=True)
    reason = ""
    own_or_given_session = requests.Session() if session is None else contextlib.nullcontext(session)
    progress_bar = tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                        disable=not show_progress)
    with own_or_given_session as http, progress_bar as bar:
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(backoff_s * 2 ** (attempt - 1))
            try:
                _fetch(http, url, partial, size, timeout, bar, progress)
                break
            except _RetryableFailure as failure:
                reason = str(failure)
            except requests.Timeout:
                reason = "the server did not answer in time"
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError):
                reason = "the connection was lost"
            except requests.TooManyRedirects:
                raise DownloadError(f"Downloading {url} failed: the server redirected more than "
                                    f"{http.max_redirects} times (a redirect loop?).") from None
            except requests.RequestException as error:
                raise DownloadError(f"Downloading {url} failed: {error}.") from None
            except OSError as error:
                raise DownloadError(f"Could not write {partial}: {error.strerror or error}.") from None
        else:
            received = partial.stat().st_size if partial.exists() else 0
            raise DownloadError(
                f"Downloading {url} failed after {retries + 1} attempts ({reason}; {received} of {size} bytes "
                "received, kept to resume next time)."
            )
    actual = sha256_of(partial)
    if actual != sha256:
        partial.unlink()
        raise DownloadError(
            f"Checksum mismatch for {url}: expected sha256 {sha256[:12]}…, got {actual[:12]}…; "
            "the download was discarded."
        )
    destination.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, destination)
    return destination


def _check_web_address(url: str) -> None:
    """Raise DownloadError unless `url` is a well-formed http(s) address."""
    try:
        parts = urlsplit(url)
        parts.port
    except ValueError as error:
        raise DownloadError(f"The download address {url!r} is malformed ({error}).") from None
    if parts.scheme not in WEB_SCHEMES or not parts.hostname:
        raise DownloadError(f"The download address {url!r} is not an http or https address with a host.")


def _refuse_redirect_away(url: str) -> Callable:
    """A requests response hook refusing a redirect to anything but http(s), or from https to http."""

    def hook(response: requests.Response, *args, **kwargs) -> None:
        if not response.is_redirect:
            return
        target = urljoin(response.url, response.headers["location"])
        origin, scheme = urlsplit(response.url).scheme, urlsplit(target).scheme
        if scheme not in WEB_SCHEMES or (origin == "https" and scheme == "http"):
            response.close()
            raise DownloadError(f"Downloading {url} failed: the server redirected it to {target}, "
                                f"which is not an {'https' if origin == 'https' else 'http or https'} address.")

    return hook


def _fetch(session: requests.Session, url: str, partial: Path, size: int, timeout: tuple[float, float],
           bar: tqdm, progress: ProgressCallback | None) -> None:
    """One attempt: request the missing bytes and append (206) or rewrite (200) the partial file."""
    offset = partial.stat().st_size if partial.exists() else 0
    if offset > size:
        partial.unlink()
        offset = 0
    if offset == size:
        return
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    hooks = {"response": _refuse_redirect_away(url)}
    with session.get(url, headers=headers, stream=True, timeout=timeout, hooks=hooks) as response:
        status = response.status_code
        if status >= 500 or status == 429:
            raise _RetryableFailure(f"HTTP {status} {response.reason}")
        if status not in (200, 206):
            raise DownloadError(f"Downloading {url} failed: HTTP {status} {response.reason}.")
        start, total = _announced_range(response)
        if status == 206 and start != offset:
            partial.unlink(missing_ok=True)
            raise _RetryableFailure("the server resumed at the wrong offset")
        if total is not None and total != size:
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"Downloading {url} failed: the server offers {total} bytes, the registry expects {size}."
            )
        received = offset if status == 206 else 0
        bar.reset(total=size)
        bar.update(received)
        too_long = False
        with open(partial, "ab" if status == 206 else "wb") as stream:
            for chunk in response.iter_content(CHUNK_BYTES):
                if received + len(chunk) > size:
                    too_long = True
                    break
                stream.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if progress is not None:
                    progress(received, size)
    if too_long:
        partial.unlink()
        raise DownloadError(f"Downloading {url} failed: the server sent more than the expected {size} bytes.")
    if received < size:
        raise _RetryableFailure("the transfer ended early")


def _announced_range(response: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size) the response announces; total is None when unknown."""
    if response.status_code == 206:
        match = CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        if not match:
            return -1, None
        first, _, total = match.groups()
        return int(first), None if total == "*" else int(total)
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None
