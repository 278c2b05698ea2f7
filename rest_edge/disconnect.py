"""Noticing that an HTTP client went away, without writing to it.

A WSGI server learns that a client left only when it next writes to it. A client that leaves
before its first token (queued, or while a long prompt is evaluated) or one waiting for a
whole non-stream answer is then never noticed until the generation ends. So the edge watches
the client's socket while the response is being produced:

* one watcher thread per process (started on first use, a daemon) ``poll``\\ s every watched
  socket for ``POLLIN | POLLRDHUP | POLLHUP | POLLERR``, plus a wake-up pipe so a new
  registration is polled at once;
* on readiness it peeks one byte (``MSG_PEEK | MSG_DONTWAIT``): end of file (``b""``) or a
  reset means the client is gone, and the watch's ``on_gone`` runs (the edge cancels the
  gRPC call); a byte means the client sent more (a pipelined request): that socket is no
  longer watched, and nothing is ever consumed;
* the socket is never read, written or closed here.

``watch(sock, on_gone)`` returns a :class:`Watch`; close it (or leave its ``with`` block)
when the response is finished, before the server reuses the connection (gunicorn's gthread
worker puts a keep-alive socket back into its own poller only after the response iterable
was closed). After ``close()`` returns, ``on_gone`` is neither running nor ever called.

A client that half-closes its side (``shutdown(SHUT_WR)``) after sending its request looks
the same as one that left; HTTP/1.1 clients do not do that in practice.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import ssl
import threading
import time
from typing import Any, Callable, Mapping, Optional

from inference_service.per_process import PerProcess

log = logging.getLogger("rest_edge")

# Where gunicorn puts the client socket in the WSGI environ (gunicorn/http/wsgi.py).
SOCKET_KEY = "gunicorn.socket"

_POLLRDHUP = getattr(select, "POLLRDHUP", 0)  # Linux: the peer shut down its sending side
_EVENTS = select.POLLIN | _POLLRDHUP | select.POLLHUP | select.POLLERR
_PEEK = socket.MSG_PEEK | getattr(socket, "MSG_DONTWAIT", 0)
_GONE_ERRNOS = frozenset({errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ENOTCONN, errno.ETIMEDOUT})
_SPURIOUS_PAUSE = 0.02  # readiness without data or end (should not happen): do not spin
# A socket closed while poll() waits on it does not wake poll (poll holds the file open), so the
# thread looks every so often for watches whose socket was closed under them.
_SWEEP_MS = 500

# Verdicts of one look at a socket.
_GONE, _DATA, _STALE = "gone", "data", "stale"


class Watch:
    """One watched response. ``gone`` tells whether the watcher saw the client leave."""

    def __init__(self, watcher: "Watcher", sock: socket.socket, fd: int, on_gone: Callable[[], Any]):
        self._watcher = watcher
        self.sock = sock
        self.fd = fd
        self._on_gone = on_gone
        self._lock = threading.RLock()  # held while on_gone runs: close() waits for it
        self._done = False
        self._gone = False

    @property
    def gone(self) -> bool:
        return self._gone

    def close(self) -> None:
        """Stops watching (idempotent). Once it returns, ``on_gone`` is not running and never will."""
        with self._lock:
            self._done = True
        self._watcher._discard(self)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
            self._gone = True
            try:
                self._on_gone()
            except Exception:  # noqa: BLE001 - a callback must not kill the watcher thread
                log.warning("callback for a departed client failed", exc_info=True)

    def _stop(self) -> None:
        with self._lock:
            self._done = True


class _NotWatched:
    """The watch of a response whose socket is unknown (falcon.testing, other servers)."""

    gone = False

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NotWatched":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


NOT_WATCHED = _NotWatched()


def _look(sock: socket.socket, fd: int, revents: int) -> Optional[str]:
    """What a readiness event on ``fd`` means for ``sock``; None: nothing after all."""
    if sock.fileno() != fd or revents & select.POLLNVAL:
        return _STALE  # the socket was closed (and its number maybe reused) without closing the watch
    if revents & (select.POLLHUP | select.POLLERR):
        return _GONE
    try:
        # The plain socket's recv, also for a TLS socket (whose own recv refuses flags): the
        # raw bytes are only peeked, never consumed.
        data = socket.socket.recv(sock, 1, _PEEK)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError as err:
        if err.errno in _GONE_ERRNOS:
            return _GONE
        log.debug("not watching a socket any more: %s", err)
        return _STALE
    if not data:
        return _GONE
    if isinstance(sock, ssl.SSLSocket) and revents & _POLLRDHUP:
        return _GONE  # TLS: the bytes are the close_notify alert, followed by the end of the stream
    return _DATA


class Watcher:
    """Watches sockets for departed peers on one daemon thread (started on first use)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_fd: dict[int, list[Watch]] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake_r = self._wake_w = -1
        self._stopping = False

    def watch(self, sock: Optional[socket.socket], on_gone: Callable[[], Any]) -> "Watch | _NotWatched":
        """Calls ``on_gone`` (on the watcher thread, at most once) when ``sock``'s peer leaves."""
        if not isinstance(sock, socket.socket):
            return NOT_WATCHED
        fd = sock.fileno()
        if fd < 0:
            return NOT_WATCHED
        handle = Watch(self, sock, fd, on_gone)
        with self._lock:
            if self._stopping:
                return NOT_WATCHED
            self._start_locked()
            self._by_fd.setdefault(fd, []).append(handle)
            self._wake_locked()
        return handle

    def watching(self) -> int:
        """How many watches are active (for tests and diagnostics)."""
        with self._lock:
            return sum(len(w) for w in self._by_fd.values())

    def stop(self) -> None:
        """Ends the thread (tests); active watches are dropped without callbacks."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._wake_locked()
        if thread is not None:
            thread.join(5)

    # --- internals ---------------------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is not None:
            return
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="client-disconnect-watcher", daemon=True)
        self._thread.start()

    def _wake_locked(self) -> None:
        if self._wake_w < 0:
            return  # not started, or ended
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _discard(self, handle: Watch) -> None:
        with self._lock:
            watches = self._by_fd.get(handle.fd)
            if not watches or handle not in watches:
                return
            watches.remove(handle)
            if not watches:
                del self._by_fd[handle.fd]
            self._wake_locked()  # so the thread stops polling a socket that goes back to the server

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        polled: set[int] = set()
        try:
            while True:
                with self._lock:
                    if self._stopping:
                        self._by_fd.clear()
                        return
                    wanted = set(self._by_fd)
                for fd in polled - wanted:
                    poller.unregister(fd)
                for fd in wanted - polled:
                    poller.register(fd, _EVENTS)
                polled = wanted
                spurious = False
                for fd, revents in poller.poll(_SWEEP_MS if polled else None):
                    if fd == self._wake_r:
                        self._drain_wake()
                    elif not self._check(fd, revents):
                        spurious = True
                if spurious:
                    time.sleep(_SPURIOUS_PAUSE)
                self._drop_closed()
        except Exception:  # noqa: BLE001 - never expected; say so once, do not take the worker down
            log.exception("the client disconnect watcher stopped")
            with self._lock:
                self._by_fd.clear()
                self._stopping = True
        finally:
            with self._lock:
                wake_r, wake_w = self._wake_r, self._wake_w
                self._wake_r = self._wake_w = -1
            os.close(wake_r)
            os.close(wake_w)

    def _drain_wake(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _drop_closed(self) -> None:
        """Stops watching sockets their owner closed without closing the watch (no callback)."""
        with self._lock:
            closed = [h for watches in self._by_fd.values() for h in watches if h.sock.fileno() != h.fd]
        for handle in closed:
            self._discard(handle)
            handle._stop()

    def _check(self, fd: int, revents: int) -> bool:
        """Handles readiness of ``fd``; False when it was spurious (nothing to see yet)."""
        with self._lock:
            watches = list(self._by_fd.get(fd, ()))
        settled = False
        for handle in watches:
            verdict = _look(handle.sock, fd, revents)
            if verdict is None:
                continue
            settled = True
            self._discard(handle)
            if verdict == _GONE:
                handle._fire()
            else:  # a pipelined request or a stale watch: stop watching, no callback
                handle._stop()
        return settled or not watches


# --- the process's watcher ---------------------------------------------------------------

_default: PerProcess[Watcher] = PerProcess(Watcher)  # a forked child makes its own (per_process)


def default_watcher() -> Watcher:
    return _default.get()


def watch(sock: Optional[socket.socket], on_gone: Callable[[], Any]) -> "Watch | _NotWatched":
    """Watches ``sock`` with the process's watcher; ``on_gone`` runs when its peer leaves."""
    if not isinstance(sock, socket.socket):
        return NOT_WATCHED
    return default_watcher().watch(sock, on_gone)


def watch_client(environ: Mapping[str, Any], on_gone: Callable[[], Any]) -> "Watch | _NotWatched":
    """Watches the client of a WSGI request; no watching without the server's socket."""
    return watch(environ.get(SOCKET_KEY), on_gone)
