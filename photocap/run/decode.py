"""The decode stage: photos to the model's input, each in a worker process.

:func:`decode_photo` (:mod:`photocap.image`) reads a file once, hashing and decoding it to the
preset's size. Here it runs in worker processes (:func:`make_pool`), so that a C decoder that
crashes on a hostile file (a segfault, the OOM killer) or hangs takes down a worker, not the
run: :func:`decode_alone` decodes a photo in a process of its own, and a crash or a hang
there fails that photo only. Workers ignore Ctrl-C (the run decides how to stop), silence the
decoders' own complaints on stderr, run at a lower priority, and never outlive the run
(:func:`_exit_with_parent`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout  # not the builtin on Python 3.10
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING

from photocap.image import DecodedPhoto, DecodeFailure, decode_photo

if TYPE_CHECKING:  # pragma: no cover
    from photocap.preset import Preset
    from photocap.run.events import CaptionOptions

DECODER_CRASHED = "the decoder crashed on this file (corrupt, or out of memory)"
# For the tests of engines whose workers a test cannot patch (Ray's): a decode worker given a
# file whose name holds this variable's value crashes as a C decoder does (SIGSEGV).
CRASH_ENV = "PHOTOCAP_TEST_CRASH_DECODER"


def _decode_in_worker(path: str, *args: object) -> DecodedPhoto | DecodeFailure:
    """:func:`decode_photo` in a worker process (and the tests' crash hook)."""
    crash = os.environ.get(CRASH_ENV)
    if crash and crash in os.path.basename(path):
        os.kill(os.getpid(), signal.SIGSEGV)
    return decode_photo(path, *args)  # type: ignore[arg-type]


def submit_decode(
    pool: ProcessPoolExecutor | None, path: Path, preset: Preset, options: CaptionOptions
) -> Future[DecodedPhoto | DecodeFailure]:
    """Decode ``path`` for the model in ``pool``, or here and now without one."""
    args = (os.fspath(path), preset, options.max_pixels, options.heif_thumbnails)
    if pool is not None:
        return pool.submit(_decode_in_worker, *args)
    return done_future(decode_photo(*args))


def decode_batch(
    paths: list[Path], preset: Preset, options: CaptionOptions
) -> list[DecodedPhoto | DecodeFailure]:
    """Decode ``paths`` in one worker process, in order. A worker that crashes or hangs is
    replaced: the photo it was on and those after it are decoded alone, so only the culprit
    fails (what a Ray decode task runs: a decoder's crash stays inside the task)."""
    pool: ProcessPoolExecutor | None = make_pool(1)
    results: list[DecodedPhoto | DecodeFailure] = []
    try:
        futures = [submit_decode(pool, path, preset, options) for path in paths]
        for k, future in enumerate(futures):
            try:
                results.append(future.result(timeout=options.decode_timeout_s))
            except (BrokenProcessPool, FutureTimeout):
                close_pool(pool, kill=True)
                pool = None
                return results + [decode_alone(p, preset, options) for p in paths[k:]]
        return results
    finally:
        close_pool(pool)


def decode_alone(
    path: Path, preset: Preset, options: CaptionOptions
) -> DecodedPhoto | DecodeFailure:
    """Decode one photo in a process of its own: a crash or a hang there fails this photo
    only."""
    alone = make_pool(1)
    timeout = options.decode_timeout_s
    try:
        return submit_decode(alone, path, preset, options).result(timeout=timeout)
    except BrokenProcessPool:
        return DecodeFailure(os.fspath(path), DECODER_CRASHED)
    except FutureTimeout:
        return DecodeFailure(
            os.fspath(path), f"decoding took over {timeout:g} s (a stuck decoder?)"
        )
    finally:
        close_pool(alone, kill=True)


def close_pool(pool: ProcessPoolExecutor | None, *, kill: bool = False) -> None:
    """Shut a decode pool down; ``kill``: its workers first, one of which may be stuck (a
    stuck worker would make the shutdown wait for ever)."""
    if pool is None:
        return
    if kill:
        # No public API before Python 3.14 (terminate_workers); _processes is stable since 3.2.
        processes = dict(getattr(pool, "_processes", None) or {})  # pid -> Process
        for process in processes.values():
            with contextlib.suppress(Exception):
                process.kill()
    pool.shutdown(wait=True, cancel_futures=True)


def done_future(result: DecodedPhoto | DecodeFailure) -> Future[DecodedPhoto | DecodeFailure]:
    future: Future[DecodedPhoto | DecodeFailure] = Future()
    future.set_result(result)
    return future


def make_pool(workers: int) -> ProcessPoolExecutor:
    # fork where available: workers start instantly and do not re-import the CLI's __main__.
    # They never touch torch, so forking after torch was imported is safe.
    method = "fork" if sys.platform.startswith("linux") else "spawn"
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context(method),
        initializer=_init_worker,
        initargs=(os.getpid(),),
    )


# How often a decode worker checks that its parent is still alive (where the kernel cannot
# tell it: not Linux).
_PARENT_CHECK_S = 1.0


def _init_worker(parent: int) -> None:
    # Ctrl-C goes to the whole process group; the parent decides how to stop, workers just
    # finish their current photo instead of dying with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A forked worker inherits the CLI's SIGTERM handler (which only sets the parent's stop
    # flag): a SIGTERM meant for the worker (multiprocessing's terminate(), systemd stopping
    # the whole unit) must end it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _exit_with_parent(parent)
    # C decoders print their own complaints about a corrupt file ("Corrupt JPEG data: ...",
    # LibRaw's "Unexpected end of file") straight to file descriptor 2, beside photocap's
    # one-line error for that file. A worker reports through its return value only.
    with contextlib.suppress(OSError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    with contextlib.suppress(OSError):
        os.nice(5)  # decoding in the background should not make the desktop sluggish


def _exit_with_parent(parent: int) -> None:
    """End this decode worker when ``parent`` (the caption run) dies, however it dies.

    A pool's workers wait for work on a pipe whose other end they hold themselves, so a
    parent killed with SIGKILL (the OOM killer, ``kill -9``, a crash) would leave them behind
    for ever, ~500 MB each. On Linux the kernel sends the worker SIGKILL when its parent
    exits (``PR_SET_PDEATHSIG``; strictly, when the parent's thread that forked it does: the
    pool is made and fed by the thread running the caption run). Everywhere, a thread also
    checks the parent every second, in case the kernel cannot be asked.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # no libc, a sandbox refusing prctl: the thread
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the kernel was asked to tell
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_CHECK_S)
        os._exit(1)  # reparented: the caption run is gone, nobody will read a result

    threading.Thread(target=watch, name="photocap-parent-watch", daemon=True).start()
